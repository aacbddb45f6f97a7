//! Webhooks: `createWebhook`, `rotateWebhookSecret`, `deleteWebhook`, and
//! `Workflow.webhooks`. A secret appears in the payload of the mutation
//! that made it and nowhere else: not in the log, a read model, a query or
//! a log line.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::Loader;
use async_graphql::{Context, InputObject, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};
use toolhub_domain::{Role, TenantId, WebhookId, WorkflowId};
use toolhub_eventstore::{Committed, WebhookCommandError};

use super::{caller, command_context, observe, parse_id, state, written, ReadBack};
use crate::error::ApiError;
use crate::read::{ReadError, ReadModels, WebhookView};
use crate::state::AppState;

/// The longest grace a rotation may give the old secret: a week.
pub const MAX_GRACE_SECONDS: i32 = 7 * 24 * 3600;

/// A webhook: a URL that starts its workflow when a request signed with
/// its secret arrives. The secret is never shown here.
pub struct Webhook(pub WebhookView);

#[Object]
impl Webhook {
    /// The webhook's id: the last segment of its URL.
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// Where senders deliver: `POST` here, signed by Standard Webhooks.
    async fn url(&self, ctx: &Context<'_>) -> async_graphql::Result<String> {
        Ok(format!("{}{}", state(ctx)?.hooks_base, self.0.id))
    }
    /// The workflow it starts.
    async fn workflow_id(&self) -> ID {
        ID(self.0.workflow_id.clone())
    }
    /// What it is for.
    async fn description(&self) -> &str {
        &self.0.description
    }
    /// Who created it.
    async fn created_by(&self) -> &str {
        &self.0.created_by
    }
    /// When it was created.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// When its secret was last rotated.
    async fn secret_rotated_at(&self) -> Option<DateTime<Utc>> {
        self.0.secret_rotated_at
    }
    /// When a delivery last started an execution.
    async fn last_delivery_at(&self) -> Option<DateTime<Utc>> {
        self.0.last_delivery_at
    }
}

impl ReadBack for Webhook {
    const AGGREGATE: &'static str = "webhook";
    const FIELD: &'static str = "webhook";

    async fn read_back(
        read: &ReadModels,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<Self>, ReadError> {
        Ok(read.webhook(tenant, id).await?.map(Webhook))
    }
}

/// Loads the webhooks of the workflows of a list with one query.
pub struct WebhookLoader {
    /// The server's state.
    pub(crate) state: Arc<AppState>,
    /// The caller's tenant: every batch is read within it.
    pub(crate) tenant: TenantId,
}

impl Loader<String> for WebhookLoader {
    type Value = Vec<WebhookView>;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[String]) -> Result<HashMap<String, Self::Value>, Self::Error> {
        let rows = self
            .state
            .read
            .webhooks_of(&self.tenant, keys)
            .await
            .map_err(ApiError::from)?;
        let mut out: HashMap<String, Vec<WebhookView>> = HashMap::new();
        for row in rows {
            out.entry(row.workflow_id.clone()).or_default().push(row);
        }
        Ok(out)
    }
}

/// `createWebhook`'s input.
#[derive(InputObject)]
pub struct CreateWebhookInput {
    /// The workflow a delivery starts.
    workflow_id: ID,
    /// What it is for (at most 500 characters).
    #[graphql(default)]
    description: String,
}

/// `rotateWebhookSecret`'s input.
#[derive(InputObject)]
pub struct RotateWebhookSecretInput {
    /// The webhook.
    id: ID,
    /// How long the old secret stays valid, in seconds: 0 revokes it at
    /// once; at most a week; the server's default (24 h) when absent.
    grace_period_seconds: Option<i32>,
}

/// `deleteWebhook`'s input.
#[derive(InputObject)]
pub struct WebhookIdInput {
    /// The webhook.
    id: ID,
}

/// What a webhook mutation answers.
#[derive(SimpleObject)]
pub struct WebhookPayload {
    /// The webhook's id.
    id: ID,
    /// Where senders deliver.
    url: String,
    /// The signing secret (`whsec_…`), shown here once, by the mutation
    /// that made it (`createWebhook`, `rotateWebhookSecret`), and never
    /// again; `null` for `deleteWebhook`.
    secret: Option<String>,
    /// The workflow it belongs to.
    workflow_id: ID,
    /// The workflow's version after the change.
    version: u64,
    /// Where the change is in the log.
    position: String,
    /// The webhook as the read models show it once they reach `position`
    /// (`null` after a deletion, or when they did not in time).
    webhook: Option<Webhook>,
}

impl From<WebhookCommandError> for ApiError {
    fn from(value: WebhookCommandError) -> Self {
        match value {
            WebhookCommandError::Command(e) => e.into(),
            WebhookCommandError::Key(e) => Self::internal(e),
        }
    }
}

/// A refused webhook command, counted like every command.
fn refused(ctx: &Context<'_>, error: WebhookCommandError) -> async_graphql::Error {
    let error = ApiError::from(error);
    match state(ctx) {
        Ok(state) => match observe(state, "webhook", Err(error)) {
            Err(error) => error.into(),
            Ok(_) => ApiError::internal("a refused command committed").into(),
        },
        Err(_) => error.into(),
    }
}

fn webhook_id(id: &ID) -> Result<WebhookId, ApiError> {
    parse_id(id, "input.id").map(WebhookId::from_uuid)
}

/// Webhook mutations.
#[derive(Default)]
pub struct WebhookMutation;

impl WebhookMutation {
    async fn payload(
        ctx: &Context<'_>,
        id: WebhookId,
        workflow_id: WorkflowId,
        secret: Option<String>,
        result: Result<Committed, ApiError>,
    ) -> async_graphql::Result<WebhookPayload> {
        let url = format!("{}{id}", state(ctx)?.hooks_base);
        let written = written::<Webhook>(ctx, id.to_string(), result).await?;
        Ok(WebhookPayload {
            id: written.id,
            url,
            secret,
            workflow_id: ID(workflow_id.to_string()),
            version: written.version,
            position: written.position,
            webhook: written.entity,
        })
    }
}

#[Object]
impl WebhookMutation {
    /// Adds a webhook to a workflow. The answer holds its URL and its
    /// signing secret, which is shown this once.
    async fn create_webhook(
        &self,
        ctx: &Context<'_>,
        input: CreateWebhookInput,
    ) -> async_graphql::Result<WebhookPayload> {
        let caller = caller(ctx, Role::Editor)?;
        let context = command_context(ctx, caller);
        let workflow_id = WorkflowId::from_uuid(parse_id(&input.workflow_id, "input.workflowId")?);
        let result = state(ctx)?
            .webhooks
            .create(&context, workflow_id, input.description)
            .await;
        match result {
            Ok((id, secret, committed)) => {
                let secret = Some(secret.as_str().to_string());
                Self::payload(ctx, id, workflow_id, secret, Ok(committed)).await
            }
            Err(error) => Err(refused(ctx, error)),
        }
    }

    /// Gives a webhook a new secret, shown this once. Deliveries signed
    /// with the old one are accepted for `gracePeriodSeconds` more.
    async fn rotate_webhook_secret(
        &self,
        ctx: &Context<'_>,
        input: RotateWebhookSecretInput,
    ) -> async_graphql::Result<WebhookPayload> {
        let caller = caller(ctx, Role::Editor)?;
        let context = command_context(ctx, caller);
        let id = webhook_id(&input.id)?;
        let state = state(ctx)?;
        let grace = match input.grace_period_seconds {
            None => chrono::Duration::from_std(state.webhook_grace)
                .unwrap_or(chrono::Duration::hours(24)),
            Some(s) if (0..=MAX_GRACE_SECONDS).contains(&s) => {
                chrono::Duration::seconds(i64::from(s))
            }
            Some(_) => {
                return Err(ApiError::validation(
                    "input.gracePeriodSeconds",
                    format!("from 0 to {MAX_GRACE_SECONDS} seconds"),
                )
                .into())
            }
        };
        match state.webhooks.rotate(&context, id, Utc::now(), grace).await {
            Ok((workflow_id, secret, committed)) => {
                let secret = Some(secret.as_str().to_string());
                Self::payload(ctx, id, workflow_id, secret, Ok(committed)).await
            }
            Err(error) => Err(refused(ctx, error)),
        }
    }

    /// Removes a webhook: deliveries to it are refused (404) from now on.
    async fn delete_webhook(
        &self,
        ctx: &Context<'_>,
        input: WebhookIdInput,
    ) -> async_graphql::Result<WebhookPayload> {
        let caller = caller(ctx, Role::Editor)?;
        let context = command_context(ctx, caller);
        let id = webhook_id(&input.id)?;
        match state(ctx)?.webhooks.delete(&context, id).await {
            Ok((workflow_id, committed)) => {
                Self::payload(ctx, id, workflow_id, None, Ok(committed)).await
            }
            Err(error) => Err(refused(ctx, error)),
        }
    }
}
