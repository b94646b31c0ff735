//! A WebSocket client for tests of `/ws` (the hub's and a service's): connect, send a
//! JSON frame, read the next text frame as JSON within [`WAIT`].

use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// A client connection.
pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long [`next`] waits for a frame.
pub const WAIT: Duration = Duration::from_secs(10);

/// Connects to `url` (`ws://host:port/ws?…`); panics when the upgrade is refused.
pub async fn connect(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url).await.expect("connect").0
}

/// Sends `frame` as a text frame.
pub async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::Text(frame.to_string().into())).await.expect("send a frame");
}

/// The next text frame as JSON, skipping pings and pongs; panics after [`WAIT`].
pub async fn next(ws: &mut Ws) -> Value {
    loop {
        let msg =
            tokio::time::timeout(WAIT, ws.next()).await.expect("a frame in time").expect("open").expect("a frame");
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).expect("a JSON frame");
        }
    }
}
