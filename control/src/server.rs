//! Starting and stopping the control server with its in-process node (the embedded default).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::auth::Verifier;
use crate::config::Config;
use crate::http::{AppState, router};
use crate::node_client::{self, InProcessNode, NodeClient};
use crate::ratelimit::{self, SignalingLimiter};
use crate::store::Caps;
use crate::watchdog;

/// A running control server.
#[derive(Debug)]
pub struct Server {
    pub http_addr: SocketAddr,
    pub media_ports: Vec<u16>,
    state: Arc<AppState>,
    listener: Option<TcpListener>,
}

impl Server {
    /// Start the in-process node. Call it from a thread at the process's normal priority
    /// (not from the async runtime, whose threads run at a lower one): the media workers
    /// inherit the priority of the thread that starts them.
    pub fn start_node(config: &Config) -> anyhow::Result<sfu_core::Node> {
        sfu_core::Node::start(config.node.clone()).context("cannot start the media node")
    }

    /// Bind the HTTP listener around a started node (does not serve yet; see
    /// [`Server::serve`]).
    pub async fn bind(config: Config, node: sfu_core::Node) -> anyhow::Result<Server> {
        let listener = TcpListener::bind(config.http.listen)
            .await
            .with_context(|| format!("cannot listen on http.listen = {}", config.http.listen))?;
        let http_addr = listener.local_addr()?;
        let node = InProcessNode::new(config.node.id.clone(), node);
        let media_ports = node.ports();
        let events = node
            .take_events()
            .context("the node's event stream was taken before control started")?;
        let node: Arc<dyn NodeClient> = Arc::new(node);
        let state = Arc::new(AppState {
            node,
            sessions: crate::store::SessionStore::default(),
            verifier: Verifier::new(&config.auth.keys, config.auth.dev, config.auth.leeway_secs),
            dev: config.auth.dev,
            max_body_bytes: config.http.max_body_bytes,
            limiter: SignalingLimiter::new(
                config.limits.signaling_rate_per_sec,
                config.limits.signaling_burst,
            ),
            caps: Caps {
                per_identity: config.limits.max_sessions_per_identity,
                per_room: config.limits.max_sessions_per_room,
                total: config.limits.max_sessions,
            },
            turn: crate::turn::TurnIssuer::new(&config.turn),
        });
        if state.limiter.is_none() {
            tracing::warn!(
                "signaling rate limit off (limits.signaling_rate_per_sec = 0): for load tests only"
            );
        }
        if config.auth.keys.is_empty() && !config.auth.dev {
            tracing::warn!("no API keys configured ([auth.keys]): every request will get 401");
        }
        tokio::spawn(apply_node_events(Arc::downgrade(&state), events));
        Ok(Server {
            http_addr,
            media_ports,
            state,
            listener: Some(listener),
        })
    }

    /// Serve HTTP until `shutdown` resolves, then stop the node. Fails with
    /// [`WorkersStopped`](crate::watchdog::WorkersStopped) in its chain as soon as a media
    /// worker stops (the process should then exit with [`watchdog::EXIT_CODE`]).
    pub async fn serve(
        mut self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let listener = self.listener.take().context("serve called twice")?;
        // Client addresses feed the per-IP signaling rate limit.
        let http = axum::serve(
            listener,
            router(self.state.clone()).into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown);
        if self.state.limiter.is_some() {
            tokio::spawn(sweep_buckets(Arc::downgrade(&self.state)));
        }
        let node = self.state.node.clone();
        let watchdog = watchdog::watch(
            move || {
                let node = node.clone();
                async move { node_client::health(node.as_ref()).await.workers_up }
            },
            watchdog::PERIOD,
        );
        tokio::select! {
            served = http => served.context("HTTP server failed"),
            stopped = watchdog => {
                tracing::error!(workers = ?stopped.workers, "{stopped}");
                Err(stopped.into())
            }
        }
    }
}

/// Keeps control's store in step with the node: a session the node ended on its own (closed
/// tab, ICE timeout, failure) is forgotten, so it no longer counts against the caps. Ends
/// with the node's event stream or the server.
async fn apply_node_events(
    state: std::sync::Weak<AppState>,
    mut events: tokio::sync::mpsc::UnboundedReceiver<sfu_core::NodeEvent>,
) {
    while let Some(event) = events.recv().await {
        let Some(state) = state.upgrade() else { return };
        let node = state.node.id();
        match event {
            sfu_core::NodeEvent::SessionEnded {
                session, reason, ..
            } => {
                if let Some(record) = state.sessions.remove_ended(node, session) {
                    tracing::debug!(
                        %session,
                        room = %record.room,
                        identity = %record.identity,
                        reason = reason.as_str(),
                        "node ended a session"
                    );
                }
            }
            sfu_core::NodeEvent::WorkerStopped { worker } => {
                tracing::error!(%node, %worker, "media worker stopped");
            }
            _ => {}
        }
    }
}

/// Keeps the rate limiter's memory bounded: every [`ratelimit::SWEEP_PERIOD`] it forgets the
/// clients whose buckets have refilled. Ends with the server.
async fn sweep_buckets(state: std::sync::Weak<AppState>) {
    let mut interval = tokio::time::interval(ratelimit::SWEEP_PERIOD);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(state) = state.upgrade() else { return };
        if let Some(limiter) = &state.limiter {
            limiter.sweep();
        }
    }
}
