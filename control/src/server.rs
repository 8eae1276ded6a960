//! Starting and stopping the control server with its in-process node (the embedded default).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sfu_core::NodeEvent;
use sfu_core::ids::NodeId;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::auth::Verifier;
use crate::cluster::link::{self, FromNode};
use crate::cluster::nodes::Nodes;
use crate::cluster::shared;
use crate::cluster::{HealthEvent, NodeState, Placement};
use crate::config::Config;
use crate::http::{AppState, router};
use crate::node_client::{self, InProcessNode, NodeClient};
use crate::ratelimit::{self, SignalingLimiter};
use crate::store::redis::RedisStore;
use crate::store::{Caps, Store};
use crate::watchdog;

/// Scheduling priority (nice) of control's signaling threads, below the media workers' 0.
const SIGNALING_NICE: i32 = 5;

/// Run control with `config` until SIGINT or SIGTERM: the node in this process when the
/// configuration embeds one (`dev`, no `[cluster] listen`, or `cluster.embedded_node`), the
/// HTTP server on a small async runtime. What `control dev` and `control serve` do once their
/// options are read; the benchmarks run a node process through it too. `dev` also trusts the
/// development key pair and takes the next free block of media ports.
pub fn run(mut config: Config, dev: bool) -> anyhow::Result<()> {
    if dev {
        config.auth.dev = true;
        // Several dev instances side by side: take the next free port block.
        config.node.media_port_scan = true;
    }
    config.validate()?;
    // Started here, before the runtime, so that the media workers keep the process's normal
    // priority: threads inherit their creator's, and the runtime's threads run lower.
    let embedded = dev || config.cluster.listen.is_none() || config.cluster.embedded_node;
    let node = if embedded {
        let node = Server::start_node(&config)?;
        // Signaling runs on the CPUs no media worker is pinned to, when there are any (e.g.
        // `--workers 1` on two cores); the runtime's threads inherit this thread's CPUs.
        node.cpus().confine_to_spare("control");
        Some(node)
    } else {
        None
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("control")
        // Signaling shares the cores with the embedded node's media workers: when both want a
        // core, forwarding goes first (a flood of offers measurably raised forwarding p99
        // latency at equal priority; bench/RESULTS.md).
        .on_thread_start(|| {
            if let Err(e) = sfu_core::affinity::lower_current_thread_priority(SIGNALING_NICE) {
                tracing::debug!(error = %e, "could not lower a signaling thread's priority");
            }
        })
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let server = Server::bind(config, node).await?;
        if let Some(cluster) = server.cluster_addr {
            println!("cluster: {cluster}");
        }
        println!("SFU ready: http://{}/", server.http_addr);
        tracing::info!(
            http = %server.http_addr,
            media_ports = ?server.media_ports,
            dev,
            "control listening; open the demo page at http://{}/",
            server.http_addr
        );
        server
            .serve(async {
                let signal = shutdown_signal().await;
                tracing::info!(signal, "shutting down");
            })
            .await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Resolves with the signal's name on SIGINT (Ctrl-C) or SIGTERM (what systemd, Kubernetes and
/// `docker stop` send): either one stops signaling, then the node, and exits 0.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops gracefully");
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// A running control server.
#[derive(Debug)]
pub struct Server {
    pub http_addr: SocketAddr,
    /// Where nodes connect (`[cluster] listen`), if set.
    pub cluster_addr: Option<SocketAddr>,
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
    pub async fn bind(config: Config, node: Option<sfu_core::Node>) -> anyhow::Result<Server> {
        let listener = TcpListener::bind(config.http.listen)
            .await
            .with_context(|| format!("cannot listen on http.listen = {}", config.http.listen))?;
        let http_addr = listener.local_addr()?;
        let placement = Placement::new(config.cluster.placement())
            .map_err(|e| anyhow::anyhow!("cluster.{e}"))?;
        let nodes = Arc::new(Nodes::new(
            placement,
            config.cluster.health(config.node.drain_timeout_secs),
        ));
        let (messages, messages_rx) = mpsc::unbounded_channel();
        let mut media_ports = Vec::new();
        if let Some(node) = node {
            let capacity = (node.ports().len() * config.node.max_sessions_per_worker) as u64;
            let node = InProcessNode::new(config.node.id.clone(), node);
            media_ports = node.ports();
            let events = node
                .take_events()
                .context("the node's event stream was taken before control started")?;
            let id = config.node.id.clone();
            tokio::spawn(forward_embedded_events(id, events, messages.clone()));
            nodes.add_embedded(Arc::new(node), capacity);
        }
        let cluster_addr = match config.cluster.listen {
            Some(listen) => Some(start_cluster(&config, listen, nodes.clone(), messages).await?),
            None => None,
        };
        let sessions = match &config.store.redis_url {
            Some(url) => {
                let instance = format!("{:016x}", rand::random::<u64>());
                let redis = RedisStore::open(url, instance.clone())
                    .map_err(|e| anyhow::anyhow!("store.redis_url: {e}"))?;
                tracing::info!(%instance, "state shared through Redis (store.redis_url)");
                tokio::spawn(
                    redis
                        .clone()
                        .serve_forwarded(shared::forward_handler(Arc::downgrade(&nodes))),
                );
                tokio::spawn(shared::sync_registry(
                    redis.clone(),
                    Arc::downgrade(&nodes),
                    Duration::from_millis(config.store.node_ttl_ms),
                    Duration::from_millis(config.store.forward_timeout_ms),
                ));
                Store::Redis(redis)
            }
            None => Store::default(),
        };
        let state = Arc::new(AppState {
            cluster: config.cluster.listen.is_some(),
            nodes,
            sessions,
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
            relay_idle_secs: config.cascade.idle_secs,
            rtc: config.rtc.clone(),
            rtc_hub: Default::default(),
            rtc_whip: Default::default(),
            ptt: config.ptt.clone(),
            hybrid: config.hybrid.clone(),
            chairs: Default::default(),
        });
        if state.limiter.is_none() {
            tracing::warn!(
                "signaling rate limit off (limits.signaling_rate_per_sec = 0): for load tests only"
            );
        }
        if config.auth.keys.is_empty() && !config.auth.dev {
            tracing::warn!("no API keys configured ([auth.keys]): every request will get 401");
        }
        tokio::spawn(apply_node_events(Arc::downgrade(&state), messages_rx));
        tokio::spawn(watch_health(Arc::downgrade(&state)));
        tokio::spawn(renew_whip_members(Arc::downgrade(&state)));
        Ok(Server {
            http_addr,
            cluster_addr,
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
        let node = self.state.nodes.embedded();
        let watchdog = watchdog::watch(
            move || {
                let node = node.clone();
                async move {
                    match node {
                        Some(node) => node_client::health(node.as_ref()).await.workers_up,
                        None => Vec::new(),
                    }
                }
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

/// Open the QUIC endpoint nodes join, with control's certificate (generated and written on
/// first start), and accept links on it.
async fn start_cluster(
    config: &Config,
    listen: SocketAddr,
    nodes: Arc<Nodes>,
    messages: link::NodeMessages,
) -> anyhow::Result<SocketAddr> {
    let cluster = &config.cluster;
    let mut names = vec![
        "localhost".to_string(),
        sfu_link::tls::SERVER_NAME.to_string(),
    ];
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    let (identity, generated) =
        sfu_link::tls::Identity::load_or_generate(&cluster.tls_cert, &cluster.tls_key, names)
            .context("cluster.tls_cert / cluster.tls_key")?;
    if generated {
        tracing::info!(
            cert = %cluster.tls_cert.display(),
            key = %cluster.tls_key.display(),
            "generated a self-signed cluster certificate; give nodes the certificate file (--control-cert)"
        );
    }
    let endpoint = sfu_link::quinn::Endpoint::server(
        sfu_link::tls::server_config(&identity).context("cluster TLS")?,
        listen,
    )
    .with_context(|| format!("cannot listen on cluster.listen = {listen}"))?;
    let addr = endpoint.local_addr()?;
    tracing::info!(%addr, "cluster listening for media nodes (QUIC)");
    // Every instance sharing the secret gives a pair of nodes the same relay link token.
    nodes.set_link_secret(cluster.secret.as_bytes());
    tokio::spawn(link::serve(
        endpoint,
        Arc::new(cluster.secret.clone()),
        nodes,
        messages,
    ));
    Ok(addr)
}

/// The embedded node's events, into the same stream as remote nodes'.
async fn forward_embedded_events(
    node: NodeId,
    mut events: mpsc::UnboundedReceiver<NodeEvent>,
    messages: link::NodeMessages,
) {
    while let Some(event) = events.recv().await {
        if messages
            .send((node.clone(), FromNode::Event(event)))
            .is_err()
        {
            return;
        }
    }
}

/// Keeps control's store in step with the nodes: a session a node ended on its own (closed
/// tab, ICE timeout, failure) is forgotten, so it no longer counts against the caps; a node
/// that registers again is reconciled with what it says it holds. Ends with the server.
async fn apply_node_events(
    state: std::sync::Weak<AppState>,
    mut messages: mpsc::UnboundedReceiver<(NodeId, FromNode)>,
) {
    while let Some((node, message)) = messages.recv().await {
        let Some(state) = state.upgrade() else { return };
        match message {
            FromNode::Registered { held, .. } => {
                match state.sessions.reconcile(&node, &held).await {
                    Ok((forgotten, adopted)) if forgotten + adopted > 0 => {
                        tracing::info!(%node, held = held.len(), forgotten, adopted, "reconciled the node's sessions");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(%node, error = %e, "cannot reconcile the node's sessions")
                    }
                }
            }
            FromNode::Event(NodeEvent::SessionEnded {
                session,
                room,
                reason,
            }) => {
                crate::rtc::session_ended(&state, &room, session, reason).await;
                let removed = state.sessions.remove_ended(&node, session).await;
                if let Err(e) = &removed {
                    tracing::warn!(%node, %session, error = %e, "cannot forget an ended session");
                }
                if let Ok(Some(record)) = removed {
                    tracing::debug!(
                        %node,
                        %session,
                        room = %record.room,
                        identity = %record.identity,
                        reason = reason.as_str(),
                        "node ended a session"
                    );
                }
            }
            FromNode::Event(NodeEvent::TrackPublished(track)) => {
                if let Err(e) = state.sessions.track_published(&node, track).await {
                    tracing::debug!(%node, error = %e, "cannot record a published track");
                }
            }
            FromNode::Event(NodeEvent::TrackUnpublished { track, .. }) => {
                if let Err(e) = state.sessions.track_unpublished(&node, track).await {
                    tracing::debug!(%node, error = %e, "cannot record an unpublished track");
                }
            }
            FromNode::Event(NodeEvent::Draining) => {
                if let Some(changes) = state.nodes.drain(&node, std::time::Instant::now()) {
                    link::log_changes(&changes);
                }
            }
            FromNode::Event(NodeEvent::Speakers { room, speakers }) => {
                crate::rtc::announce_speakers(&state, &room, speakers).await;
            }
            FromNode::Event(NodeEvent::Data {
                session,
                room,
                reliable,
                text,
            }) => {
                crate::rtc::data_received(&state, &room, session, reliable, text).await;
            }
            FromNode::Event(NodeEvent::Quality {
                session,
                room,
                quality,
            }) => {
                crate::rtc::quality_changed(&state, &room, session, quality).await;
            }
            FromNode::Event(NodeEvent::WorkerStopped { worker }) => {
                tracing::error!(%node, %worker, "media worker stopped");
            }
            FromNode::Event(_) => {}
        }
    }
}

/// How often silence is checked for (a node is suspect after `suspect_after_ms`).
const HEALTH_TICK: std::time::Duration = std::time::Duration::from_millis(250);

/// Turns silence into suspect and dead nodes. A dead node's sessions are forgotten, so their
/// resources answer 404 and their clients post again, landing on a live node.
async fn watch_health(state: std::sync::Weak<AppState>) {
    let mut interval = tokio::time::interval(HEALTH_TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(state) = state.upgrade() else { return };
        let changes = state.nodes.tick(std::time::Instant::now());
        link::log_changes(&changes);
        for change in changes {
            if let HealthEvent::DrainExpired { node, .. } = &change {
                end_drained_sessions(&state, node).await;
            }
            if let HealthEvent::Changed {
                node,
                to: NodeState::Dead,
                ..
            } = change
            {
                // A link that outlived the silence (a network cut shorter than QUIC's idle
                // timeout) would keep a dead incarnation: close it, so the node registers
                // again when it can.
                if let Some(client) = state.nodes.client(&node) {
                    client.disconnect("declared dead: no heartbeat");
                }
                match state.sessions.remove_node(&node).await {
                    Ok(released) => {
                        tracing::warn!(%node, released, "node is dead; its rooms will be placed on live nodes")
                    }
                    Err(e) => {
                        tracing::warn!(%node, error = %e, "node is dead; cannot release its sessions in the store")
                    }
                }
            }
        }
    }
}

/// A drain reached `node.drain_timeout_secs`: end the sessions the node still holds, so their
/// clients post again and land on a node that is up. The node stays draining.
async fn end_drained_sessions(state: &AppState, node: &NodeId) {
    let sessions = match state.sessions.node_sessions(node).await {
        Ok(sessions) => sessions,
        Err(e) => {
            tracing::warn!(%node, error = %e, "drain timeout: cannot list the node's sessions");
            return;
        }
    };
    let mut ended = 0;
    for session in &sessions {
        if crate::admin::end_session(state, *session, node).await {
            ended += 1;
        }
    }
    tracing::warn!(%node, ended, held = sessions.len(), "drain timeout (node.drain_timeout_secs): ended the node's remaining sessions");
}

/// Renews the roster leases of the WHIP publishers listed in meeting rooms, and lets those
/// whose session ended out of their rooms. Ends with the server.
async fn renew_whip_members(state: std::sync::Weak<AppState>) {
    let mut interval = tokio::time::interval(crate::rtc::participant::LEASE_RENEW);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(state) = state.upgrade() else { return };
        crate::rtc::whip::renew(&state).await;
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
