//! The floor the hub benches measure against: a minimal hub written with axum and
//! `tokio::sync::broadcast`, without auth, history, resume or bounds. Every client gets
//! every payload of one channel; a lagging one skips what it missed.

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::routing::get;
use futures::{SinkExt as _, StreamExt as _};

/// Sent on the channel, ends every floor connection (so a run's sockets are not held
/// through the next one).
pub(crate) const BYE: &str = "bye";

async fn floor_ws(
    State(tx): State<tokio::sync::broadcast::Sender<String>>,
    ws: WebSocketUpgrade,
) -> axum::response::Response {
    ws.on_upgrade(move |socket: WebSocket| async move {
        let mut rx = tx.subscribe();
        let (mut sink, _stream) = socket.split();
        loop {
            match rx.recv().await {
                Ok(text) if text == BYE => break,
                Ok(text) => {
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
    })
}

/// Serves `app` on a free loopback port; its `/ws` URL.
pub(crate) async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/ws", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// The floor hub on `tx`, served; its `/ws` URL.
pub(crate) async fn floor(tx: &tokio::sync::broadcast::Sender<String>) -> String {
    serve(axum::Router::new().route("/ws", get(floor_ws)).with_state(tx.clone())).await
}
