//! `/graphql/ws`: graphql-transport-ws, with a limit on every door.
//!
//! async-graphql speaks the protocol; this module sits between it and the
//! socket and enforces what the protocol leaves to the server:
//!
//! - a socket must complete `connection_init` within `ws_init_timeout`
//!   (else close `4408 Connection initialisation timeout`), and may send at
//!   most `ws_init_buffer` messages before it is acknowledged (else `4400`);
//! - a `subscribe` before the acknowledgement closes with `4401
//!   Unauthorized`, and a second `subscribe` with an id still running with
//!   `4409 Subscriber for <id> already exists`, as the protocol says;
//! - a message larger than `ws_max_message_bytes` closes with `1009`;
//! - at most `ws_subscriptions_per_socket` subscriptions per socket and
//!   `ws_subscriptions_per_caller` per caller (over all their sockets on this
//!   replica), and the subscription rate limits: a `subscribe` beyond them is
//!   answered with an `error` message for that id (`RATE_LIMITED`), and the
//!   socket and its other subscriptions go on;
//! - when the token's `exp` (plus the leeway) passes, the socket is closed
//!   with `4403 Forbidden`: graphql-ws's code for an authorisation the
//!   server refuses, and one its client does not treat as fatal, so it
//!   reconnects, calling its `connectionParams` again for a fresh token;
//! - every `ws_keepalive` the server sends a `ping` (`ka` on the legacy
//!   subscriptions-transport-ws protocol), which keeps proxies from closing
//!   an idle socket and lets a dead peer be noticed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_graphql::http::{WebSocketProtocols, WsMessage};
use async_graphql::Data;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::time::Instant;
use tracing::Instrument;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::graphql::{Loaders, RequestData, ToolhubSchema};
use crate::state::AppState;
use crate::throttle::{Kind, SubscriptionSlot};

/// Messages handed to async-graphql and not yet taken by it. It takes them
/// as soon as it is polled, so this fills only under a flood.
const INPUT_BUFFER: usize = 64;

/// The WebSocket subprotocol the client asked for, if Toolhub speaks it.
pub fn protocol(requested: Option<&str>) -> Option<WebSocketProtocols> {
    requested?
        .split(',')
        .find_map(|p| p.trim().parse::<WebSocketProtocols>().ok())
}

/// A close code and its reason.
type Close = (u16, String);

/// What a client's message asks for, as far as the limits care.
enum ClientIntent {
    /// Start a subscription with this id.
    Subscribe(String),
    /// Start a subscription with this id, whose document nests deeper
    /// than [`crate::graphql::nesting::MAX_NESTING`]: refused before it is
    /// parsed (see `crate::graphql::nesting`).
    TooDeep(String),
    /// Stop the subscription with this id.
    Complete(String),
    /// Anything else (`connection_init`, `ping`, `pong`, …).
    Other,
}

fn client_intent(text: &str) -> ClientIntent {
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return ClientIntent::Other;
    };
    let id = value["id"].as_str().map(str::to_string);
    match (value["type"].as_str(), id) {
        (Some("subscribe" | "start"), Some(id))
            if value["payload"]["query"]
                .as_str()
                .is_some_and(crate::graphql::nesting::too_deep) =>
        {
            ClientIntent::TooDeep(id)
        }
        (Some("subscribe" | "start"), Some(id)) => ClientIntent::Subscribe(id),
        (Some("complete" | "stop"), Some(id)) => ClientIntent::Complete(id),
        _ => ClientIntent::Other,
    }
}

/// Serves one socket until either side closes it or a limit does.
pub async fn serve(
    state: Arc<AppState>,
    schema: ToolhubSchema,
    socket: WebSocket,
    protocol: WebSocketProtocols,
    request_id: String,
    address: Option<IpAddr>,
) {
    let span = tracing::info_span!("subscription", request_id = %request_id);
    async move {
        let (mut sink, stream) = socket.split();
        let close = Connection::new(state, protocol, address)
            .run(schema, &mut sink, stream, request_id)
            .await;
        if let Some((code, reason)) = close {
            tracing::debug!(code, %reason, "closing the socket");
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            let _ = sink.send(Message::Close(Some(frame))).await;
        }
        let _ = sink.close().await;
    }
    .instrument(span)
    .await
}

/// One socket's state.
struct Connection {
    /// The server's state: limits, throttle, authenticator.
    state: Arc<AppState>,
    /// The protocol spoken.
    protocol: WebSocketProtocols,
    /// The client's address, for the per-address rate.
    address: Option<IpAddr>,
    /// The caller, once `connection_init` has been acknowledged.
    caller: Option<Caller>,
    /// The subscriptions running on this socket, each holding a slot of
    /// its caller's.
    running: HashMap<String, SubscriptionSlot>,
    /// Messages received before the acknowledgement.
    before_ack: usize,
}

impl Connection {
    fn new(state: Arc<AppState>, protocol: WebSocketProtocols, address: Option<IpAddr>) -> Self {
        Self {
            state,
            protocol,
            address,
            caller: None,
            running: HashMap::new(),
            before_ack: 0,
        }
    }

    /// Relays between the socket and async-graphql until the end; returns
    /// the close frame to send, if any.
    async fn run(
        mut self,
        schema: ToolhubSchema,
        sink: &mut futures::stream::SplitSink<WebSocket, Message>,
        mut stream: futures::stream::SplitStream<WebSocket>,
        request_id: String,
    ) -> Option<Close> {
        let limits = self.state.limits.clone();
        let (mut to_graphql, input) = futures::channel::mpsc::channel::<String>(INPUT_BUFFER);
        // The caller the initialiser verified, picked up when async-graphql
        // acknowledges the connection.
        let verified: Arc<Mutex<Option<Caller>>> = Arc::default();
        let init_state = self.state.clone();
        let init_slot = verified.clone();
        let graphql = async_graphql::http::WebSocket::new(schema, input, self.protocol)
            .on_connection_init(move |payload| async move {
                let authorization = ["authorization", "Authorization"]
                    .iter()
                    .find_map(|k| payload.get(*k))
                    .and_then(|v| v.as_str());
                let caller = init_state
                    .auth
                    .authenticate(authorization)
                    .await
                    .map_err(|e| async_graphql::Error::new(e.message()))?;
                let mut data = Data::default();
                data.insert(Loaders::new(&init_state, &caller));
                data.insert(RequestData {
                    caller: caller.clone(),
                    request_id,
                });
                *init_slot.lock() = Some(caller);
                Ok(data)
            });
        let mut graphql = Box::pin(graphql);
        let init_deadline = Instant::now() + limits.ws_init_timeout;
        let mut expires = None;
        let mut keepalive =
            tokio::time::interval_at(Instant::now() + limits.ws_keepalive, limits.ws_keepalive);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let acknowledged = self.caller.is_some();
            let expiry = expires.unwrap_or(init_deadline);
            tokio::select! {
                frame = stream.next() => {
                    let text = match frame {
                        None | Some(Ok(Message::Close(_))) => return None,
                        Some(Err(error)) => return too_big(error),
                        Some(Ok(Message::Text(text))) => text.as_str().to_owned(),
                        Some(Ok(Message::Binary(bytes))) => match String::from_utf8(bytes.to_vec()) {
                            Ok(text) => text,
                            Err(_) => return Some((4400, "Messages must be UTF-8 JSON".into())),
                        },
                        // WebSocket pings are answered by the socket itself.
                        Some(Ok(_)) => continue,
                    };
                    if !acknowledged {
                        self.before_ack += 1;
                        if self.before_ack > limits.ws_init_buffer {
                            return Some((4400, "Too many messages before connection_ack".into()));
                        }
                    }
                    match client_intent(&text) {
                        ClientIntent::Subscribe(id) => {
                            if !acknowledged {
                                return Some((4401, "Unauthorized".into()));
                            }
                            if self.running.contains_key(&id) {
                                return Some((4409, format!("Subscriber for {id} already exists")));
                            }
                            match self.admit() {
                                Ok(slot) => {
                                    self.running.insert(id, slot);
                                }
                                Err(error) => {
                                    let refusal = self.error_message(&id, &error);
                                    if sink.send(Message::Text(refusal.into())).await.is_err() {
                                        return None;
                                    }
                                    continue;
                                }
                            }
                        }
                        ClientIntent::TooDeep(id) => {
                            if !acknowledged {
                                return Some((4401, "Unauthorized".into()));
                            }
                            let refusal = self.error_message(&id, &crate::graphql::nesting::too_deep_error());
                            if sink.send(Message::Text(refusal.into())).await.is_err() {
                                return None;
                            }
                            continue;
                        }
                        ClientIntent::Complete(id) => {
                            self.running.remove(&id);
                        }
                        ClientIntent::Other => {}
                    }
                    if to_graphql.try_send(text).is_err() {
                        return Some((4400, "Too many messages at once".into()));
                    }
                }
                out = graphql.next() => match out {
                    None => return None,
                    Some(WsMessage::Close(code, reason)) => return Some((code, reason)),
                    Some(WsMessage::Text(text)) => {
                        if let Ok(value) = serde_json::from_str::<Value>(&text) {
                            match value["type"].as_str() {
                                Some("connection_ack") => {
                                    self.caller = verified.lock().take();
                                    expires = self.caller.as_ref().map(|c| deadline(c.expires_at));
                                }
                                Some("complete" | "error") => {
                                    if let Some(id) = value["id"].as_str() {
                                        self.running.remove(id);
                                    }
                                }
                                _ => {}
                            }
                        }
                        if sink.send(Message::Text(text.into())).await.is_err() {
                            return None;
                        }
                    }
                },
                _ = tokio::time::sleep_until(expiry) => {
                    return Some(if acknowledged {
                        (4403, "Forbidden: the token has expired".into())
                    } else {
                        (4408, "Connection initialisation timeout".into())
                    });
                }
                _ = keepalive.tick() => {
                    let ping = match self.protocol {
                        WebSocketProtocols::GraphQLWS => json!({ "type": "ping" }),
                        WebSocketProtocols::SubscriptionsTransportWS => json!({ "type": "ka" }),
                    };
                    if sink.send(Message::Text(ping.to_string().into())).await.is_err() {
                        return None;
                    }
                }
            }
        }
    }

    /// Whether one more subscription may start on this socket: its
    /// socket's and its caller's counts, then the rates.
    fn admit(&self) -> Result<SubscriptionSlot, ApiError> {
        let limits = &self.state.limits;
        let Some(caller) = &self.caller else {
            return Err(ApiError::Unauthenticated("connection_init first"));
        };
        if self.running.len() >= limits.ws_subscriptions_per_socket {
            return Err(ApiError::RateLimited {
                reason: "SUBSCRIPTIONS_PER_SOCKET",
                retry_after: None,
            });
        }
        let throttle = &self.state.throttle;
        throttle.check_subject(Kind::Subscription, caller)?;
        throttle.check_address(Kind::Subscription, self.address)?;
        throttle.subscription_slot(caller)
    }

    /// The protocol's `error` message for subscription `id`.
    fn error_message(&self, id: &str, error: &ApiError) -> String {
        let payload = match self.protocol {
            WebSocketProtocols::GraphQLWS => json!([error.to_json()]),
            WebSocketProtocols::SubscriptionsTransportWS => error.to_json(),
        };
        json!({ "id": id, "type": "error", "payload": payload }).to_string()
    }
}

/// The instant a token that is accepted until `expires_at` (seconds since
/// the epoch) stops being accepted.
fn deadline(expires_at: u64) -> Instant {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let left = Duration::from_secs(expires_at).saturating_sub(now);
    // A far-future `exp` must not overflow the clock.
    Instant::now() + left.min(Duration::from_secs(10 * 365 * 86_400))
}

/// The close for a read error: 1009 when the message was over the size
/// limit, nothing (the socket is gone) otherwise.
fn too_big(error: axum::Error) -> Option<Close> {
    use tokio_tungstenite::tungstenite::error::{CapacityError, Error};
    match error.into_inner().downcast_ref::<Error>() {
        Some(Error::Capacity(CapacityError::MessageTooLong { .. })) => {
            Some((1009, "Message too big".into()))
        }
        _ => None,
    }
}
