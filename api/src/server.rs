//! Server wiring: start the node, serve gRPC (public API + node-to-node + reflection) and REST,
//! shut down gracefully on SIGINT/SIGTERM.

use std::sync::Arc;

use anyhow::{Context, Result};
use edgefabric_crypto::Identity;
use edgefabric_store::node::Node;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{read_token, NodeConfig};
use crate::grpc;

pub struct AppState {
    pub node: Arc<Node>,
    admin_token: String,
    /// Signs and checks access tokens (derived from the admin token; see `auth.rs`).
    pub token_key: edgefabric_crypto::Identity,
}

impl AppState {
    pub fn new(node: Arc<Node>, admin_token: String) -> Self {
        let token_key = crate::auth::signing_key(&admin_token);
        AppState { node, admin_token, token_key }
    }

    pub fn check_token(&self, presented: &str) -> bool {
        edgefabric_crypto::constant_time_eq(presented.as_bytes(), self.admin_token.as_bytes())
    }

    /// The roles a bearer token carries: the admin token is `admin`; an access token, its roles
    /// (if signed by this cluster and not expired).
    pub fn roles(&self, presented: &str) -> Result<Vec<String>, crate::auth::AuthError> {
        if self.check_token(presented) {
            return Ok(vec!["admin".into()]);
        }
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let claims = crate::auth::verify(&self.token_key.public_key(), presented, now)?;
        if self.node.token_revoked(&claims.jti) {
            return Err(crate::auth::AuthError::Revoked);
        }
        Ok(claims.roles)
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

pub async fn run(cfg: NodeConfig) -> Result<()> {
    let admin_token = read_token(&cfg.admin_token_file)?;
    let identity = Arc::new(Identity::read(&cfg.key_file).context("node key")?);
    // Bind first, so a port in use is reported before anything starts.
    let grpc_listener =
        TcpListener::bind(cfg.grpc).await.with_context(|| format!("binding gRPC {}", cfg.grpc))?;
    let http_listener =
        TcpListener::bind(cfg.http).await.with_context(|| format!("binding HTTP {}", cfg.http))?;

    let node = Node::start(cfg.node_options(identity.clone())?).await.context("starting the node")?;
    let state = Arc::new(AppState::new(node.clone(), admin_token));

    let (stop_tx, stop_rx) = watch::channel(false);
    let wait_stop = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(grpc::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("gRPC reflection")?;
    let grpc_server = tonic::transport::Server::builder()
        .add_service(node.internal_service())
        .add_service(grpc::service(state.clone()))
        .add_service(grpc::cluster_service(state.clone()))
        .add_service(grpc::ledger_service(state.clone()))
        .add_service(reflection)
        // No Nagle: raft and client replies are small, and Nagle with delayed ACKs adds ~40 ms.
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
            wait_stop(stop_rx.clone()),
        );
    let http_listener = axum::serve::ListenerExt::tap_io(http_listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
    });
    let http_server = axum::serve(http_listener, crate::http::router(state.clone()))
        .with_graceful_shutdown(wait_stop(stop_rx.clone()));

    println!(
        "EdgeFabric node {} (site {}) serving\n  REST  http://{}\n  gRPC  {}\n  data  {}\n  admin token in {}\n  node key {}",
        cfg.id,
        cfg.site,
        cfg.http,
        cfg.grpc,
        cfg.data_dir.display(),
        cfg.admin_token_file.display(),
        identity.public_key().to_base64(),
    );

    let mut grpc_task = tokio::spawn(grpc_server);
    let mut http_task = tokio::spawn(async move { http_server.await });
    let mut failed = None;
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("shutting down"),
        r = &mut grpc_task => failed = Some(format!("gRPC server stopped: {r:?}")),
        r = &mut http_task => failed = Some(format!("HTTP server stopped: {r:?}")),
    }
    let _ = stop_tx.send(true);
    node.shutdown().await;
    if let Some(f) = failed {
        anyhow::bail!(f);
    }
    let _ = grpc_task.await;
    let _ = http_task.await;
    Ok(())
}
