//! Starting and stopping the control server with its in-process node (the embedded default).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::auth::Verifier;
use crate::config::Config;
use crate::http::{AppState, router};

/// A running control server.
#[derive(Debug)]
pub struct Server {
    pub http_addr: SocketAddr,
    pub media_ports: Vec<u16>,
    state: Arc<AppState>,
    listener: Option<TcpListener>,
}

impl Server {
    /// Start the node and bind the HTTP listener (does not serve yet; see [`Server::serve`]).
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        let listener = TcpListener::bind(config.http.listen)
            .await
            .with_context(|| format!("cannot listen on http.listen = {}", config.http.listen))?;
        let http_addr = listener.local_addr()?;
        let node_config = config.node.clone();
        // Node start-up binds sockets and spawns threads: keep it off the async workers.
        let node = tokio::task::spawn_blocking(move || sfu_core::Node::start(node_config))
            .await
            .context("node start-up task failed")?
            .context("cannot start the media node")?;
        let media_ports = node.ports();
        let state = Arc::new(AppState {
            node,
            sessions: crate::store::SessionStore::default(),
            verifier: Verifier::new(&config.auth.keys, config.auth.dev, config.auth.leeway_secs),
            dev: config.auth.dev,
            max_body_bytes: config.http.max_body_bytes,
        });
        if config.auth.keys.is_empty() && !config.auth.dev {
            tracing::warn!("no API keys configured ([auth.keys]): every request will get 401");
        }
        Ok(Server {
            http_addr,
            media_ports,
            state,
            listener: Some(listener),
        })
    }

    /// Serve HTTP until `shutdown` resolves, then stop the node.
    pub async fn serve(
        mut self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let listener = self.listener.take().context("serve called twice")?;
        axum::serve(listener, router(self.state.clone()))
            .with_graceful_shutdown(shutdown)
            .await
            .context("HTTP server failed")?;
        Ok(())
    }
}
