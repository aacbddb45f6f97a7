//! A transport wrapper that notices at once when a session ends.
//!
//! When a stdio server dies, rmcp's service loop sees the end of its output
//! but keeps its request channel open for a few more seconds while it drains
//! and closes; a request sent in that window waits for nothing, and a request
//! in flight learns of the death only at the end. Wrapping the transport lets
//! the connection see the end of the server's output (or a failed write) the
//! moment rmcp does, so that a dead connection is replaced before it is used
//! and an in-flight call fails promptly.

use rmcp::service::{RoleClient, RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use std::future::Future;
use tokio_util::sync::CancellationToken;

/// Delegates to `inner`, cancelling `ended` when the session ends.
pub(crate) struct EndWatch<T> {
    /// The real transport.
    inner: T,
    /// Cancelled when `receive` reports the end of the stream or a send fails.
    ended: CancellationToken,
}

impl<T> EndWatch<T> {
    /// Watches `inner`; `ended` is cancelled when its session ends.
    pub(crate) fn new(inner: T, ended: CancellationToken) -> Self {
        Self { inner, ended }
    }
}

impl<T: Transport<RoleClient>> Transport<RoleClient> for EndWatch<T> {
    type Error = T::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let ended = self.ended.clone();
        let sending = self.inner.send(item);
        async move {
            let result = sending.await;
            if result.is_err() {
                ended.cancel();
            }
            result
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        let message = self.inner.receive().await;
        if message.is_none() {
            self.ended.cancel();
        }
        message
    }

    fn close(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.ended.cancel();
        self.inner.close()
    }
}
