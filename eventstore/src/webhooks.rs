//! Webhooks' signing secrets and the webhook commands around them.
//!
//! A webhook belongs to a workflow: its existence, description and which
//! generations of its secret are valid until when are workflow events
//! (`WebhookCreated`, `WebhookSecretRotated`, `WebhookDeleted`). The secrets
//! themselves (`whsec_` and 32 random bytes in base64, the Standard Webhooks
//! format) never reach the command bus or the log: each generation is
//! sealed by the key store under the master key, bound to the webhook and
//! the generation, in `webhook_secrets`. A row becomes usable only once the
//! command that records its generation has committed — the aggregate, not
//! the table, says which generations are valid — so a row left by a failed
//! command opens nothing.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chrono::{DateTime, Utc};
use rand::RngCore;
use toolhub_domain::workflow::{Webhook, Workflow, WorkflowCommand, WorkflowError};
use toolhub_domain::{AggregateRoot, TenantId, WebhookId, WorkflowId};
use zeroize::Zeroizing;

use crate::bus::{CommandBus, Committed};
use crate::error::{CommandError, ConflictKind, StoreError};
use crate::keys::{BoundSeal, KeyError, KeyStore};
use crate::metadata::CommandContext;
use crate::sql::{exec, fetch};
use crate::store::Db;

/// The prefix of every webhook secret, as Standard Webhooks writes them.
pub const SECRET_PREFIX: &str = "whsec_";

/// What went wrong with a webhook command.
#[derive(Debug, thiserror::Error)]
pub enum WebhookCommandError {
    /// The command itself failed (rejected, not found, conflict, storage).
    #[error(transparent)]
    Command(#[from] CommandError<WorkflowError>),
    /// Sealing or opening a secret failed.
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl From<StoreError> for WebhookCommandError {
    fn from(value: StoreError) -> Self {
        Self::Command(CommandError::Store(value))
    }
}

/// A webhook as a delivery needs it: whose it is, the state the log gives
/// it, and its secrets valid now, opened.
pub struct DeliveryKeys {
    /// The owning tenant.
    pub tenant: TenantId,
    /// The workflow it starts.
    pub workflow_id: WorkflowId,
    /// Whether that workflow is archived now.
    pub archived: bool,
    /// The raw key bytes of every generation valid now, newest first.
    pub secrets: Vec<Zeroizing<Vec<u8>>>,
}

/// A new secret: the `whsec_…` text shown once to its creator.
pub type NewSecret = Zeroizing<String>;

/// Webhook commands with their secrets. Cheap to share behind an `Arc`.
pub struct Webhooks {
    /// The workflow commands the webhook events go through.
    bus: std::sync::Arc<CommandBus<Workflow>>,
    /// Seals and opens the secrets.
    keys: KeyStore,
    /// Where the sealed secrets live (`webhook_secrets`).
    db: Db,
}

fn context(webhook: WebhookId, generation: u32) -> String {
    format!("webhook-secret:{webhook}:{generation}")
}

/// `whsec_` and 32 random bytes in standard base64.
fn generate_secret() -> (NewSecret, Zeroizing<Vec<u8>>) {
    let mut raw = Zeroizing::new(vec![0u8; 32]);
    rand::rngs::OsRng.fill_bytes(raw.as_mut_slice());
    let text = Zeroizing::new(format!("{SECRET_PREFIX}{}", B64.encode(raw.as_slice())));
    (text, raw)
}

impl Webhooks {
    /// Webhook commands over the workflow bus, sealing with `keys` into `db`.
    pub fn new(bus: std::sync::Arc<CommandBus<Workflow>>, keys: KeyStore, db: Db) -> Self {
        Self { bus, keys, db }
    }

    /// Creates a webhook for a workflow: generation 1 of its secret sealed
    /// and stored, then `CreateWebhook`. A failed command takes the stored
    /// secret away again. Returns the id, the secret (shown once) and the
    /// commit.
    pub async fn create(
        &self,
        ctx: &CommandContext,
        workflow_id: WorkflowId,
        description: String,
    ) -> Result<(WebhookId, NewSecret, Committed), WebhookCommandError> {
        let id = WebhookId::random();
        let (secret, raw) = generate_secret();
        self.store_secret(&ctx.tenant, workflow_id, id, 1, &raw)
            .await?;
        let command = WorkflowCommand::CreateWebhook {
            webhook_id: id,
            description,
        };
        match self
            .bus
            .execute(&workflow_id.to_string(), command, ctx)
            .await
        {
            Ok(committed) => Ok((id, secret, committed)),
            Err(error) => {
                self.forget(id, None).await;
                Err(error.into())
            }
        }
    }

    /// Rotates a webhook's secret: the next generation sealed and stored,
    /// then `RotateWebhookSecret`, after which the older generations are
    /// valid until `at + grace` at the latest. Returns the workflow, the new
    /// secret and the commit.
    pub async fn rotate(
        &self,
        ctx: &CommandContext,
        id: WebhookId,
        at: DateTime<Utc>,
        grace: chrono::Duration,
    ) -> Result<(WorkflowId, NewSecret, Committed), WebhookCommandError> {
        let (workflow_id, hook) = self.owned(ctx, id).await?;
        let generation = hook.generation + 1;
        let (secret, raw) = generate_secret();
        if !self
            .store_secret(&ctx.tenant, workflow_id, id, generation, &raw)
            .await?
        {
            // Another rotation took this generation first.
            return Err(CommandError::Conflict(ConflictKind::LostRace).into());
        }
        let command = WorkflowCommand::RotateWebhookSecret {
            webhook_id: id,
            generation,
            at,
            previous_valid_until: at + grace,
        };
        let committed = match self
            .bus
            .execute(&workflow_id.to_string(), command, ctx)
            .await
        {
            Ok(committed) => committed,
            Err(error) => {
                self.forget(id, Some(generation)).await;
                return Err(error.into());
            }
        };
        // Generations that ended are gone from the aggregate: drop their
        // sealed secrets too (a failure here only leaves rows that open
        // nothing, which the next rotation or the deletion removes).
        if let Ok((state, _)) = self.bus.current(&workflow_id.to_string()).await {
            if let Some(hook) = state.webhook(id) {
                let keep: Vec<String> = hook
                    .secrets
                    .iter()
                    .map(|s| s.generation.to_string())
                    .collect();
                let _ = exec(
                    &self.db,
                    &format!(
                        "DELETE FROM webhook_secrets WHERE webhook_id = $1 AND generation NOT IN ({})",
                        keep.join(", ")
                    ),
                    &[id.to_string().into()],
                )
                .await;
            }
        }
        Ok((workflow_id, secret, committed))
    }

    /// Deletes a webhook: `DeleteWebhook`, then its sealed secrets.
    pub async fn delete(
        &self,
        ctx: &CommandContext,
        id: WebhookId,
    ) -> Result<(WorkflowId, Committed), WebhookCommandError> {
        let (workflow_id, _) = self.owned(ctx, id).await?;
        let committed = self
            .bus
            .execute(
                &workflow_id.to_string(),
                WorkflowCommand::DeleteWebhook { webhook_id: id },
                ctx,
            )
            .await?;
        self.forget(id, None).await;
        Ok((workflow_id, committed))
    }

    /// What a delivery to `id` needs, or `None` when no such webhook exists
    /// now (never created, deleted, or created by a command that failed).
    pub async fn delivery_keys(
        &self,
        id: WebhookId,
        now: DateTime<Utc>,
    ) -> Result<Option<DeliveryKeys>, WebhookCommandError> {
        let rows = fetch(
            &self.db,
            "SELECT generation, tenant, workflow_id, master_key, nonce, sealed \
             FROM webhook_secrets WHERE webhook_id = $1 ORDER BY generation DESC",
            &[id.to_string().into()],
        )
        .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let tenant = first.text("tenant")?;
        let Ok(workflow_id) = first.text("workflow_id")?.parse::<WorkflowId>() else {
            return Ok(None);
        };
        // Read from the database, not the cache: a secret revoked or a
        // webhook deleted through another replica must be refused here too.
        let (state, _) = self.bus.load(&workflow_id.to_string()).await?;
        let Some(hook) = state.webhook(id) else {
            return Ok(None);
        };
        let Some(owner) = state.tenant().filter(|t| t.as_str() == tenant) else {
            return Ok(None);
        };
        let valid = hook.valid_generations(now);
        let mut secrets = Vec::with_capacity(valid.len());
        for row in &rows {
            let generation = u32::try_from(row.int("generation")?).unwrap_or(0);
            if !valid.contains(&generation) {
                continue;
            }
            let sealed = BoundSeal {
                master_key: row.text("master_key")?,
                nonce: row.bytes("nonce")?,
                ciphertext: row.bytes("sealed")?,
            };
            secrets.push(self.keys.open_bound(&context(id, generation), &sealed)?);
        }
        Ok(Some(DeliveryKeys {
            tenant: owner.clone(),
            workflow_id,
            archived: state.is_archived(),
            secrets,
        }))
    }

    /// The workflow that owns webhook `id` and the webhook as the log
    /// records it, if the caller's tenant owns it; else not found.
    async fn owned(
        &self,
        ctx: &CommandContext,
        id: WebhookId,
    ) -> Result<(WorkflowId, Webhook), WebhookCommandError> {
        let rows = fetch(
            &self.db,
            "SELECT tenant, workflow_id FROM webhook_secrets WHERE webhook_id = $1 LIMIT 1",
            &[id.to_string().into()],
        )
        .await?;
        let not_found =
            || WebhookCommandError::Command(CommandError::Domain(WorkflowError::WebhookNotFound));
        let Some(row) = rows.first() else {
            return Err(not_found());
        };
        if row.text("tenant")? != ctx.tenant.as_str() {
            return Err(not_found());
        }
        let workflow_id: WorkflowId = row.text("workflow_id")?.parse().map_err(|_| not_found())?;
        let (state, _) = self.bus.load(&workflow_id.to_string()).await?;
        let hook = state.webhook(id).cloned().ok_or_else(not_found)?;
        Ok((workflow_id, hook))
    }

    /// Seals and stores one generation; `false` when it is already stored.
    async fn store_secret(
        &self,
        tenant: &TenantId,
        workflow_id: WorkflowId,
        id: WebhookId,
        generation: u32,
        raw: &[u8],
    ) -> Result<bool, WebhookCommandError> {
        let sealed = self.keys.seal_bound(&context(id, generation), raw)?;
        let inserted = exec(
            &self.db,
            "INSERT INTO webhook_secrets \
             (webhook_id, generation, tenant, workflow_id, master_key, nonce, sealed) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (webhook_id, generation) DO NOTHING",
            &[
                id.to_string().into(),
                generation.into(),
                tenant.as_str().into(),
                workflow_id.to_string().into(),
                sealed.master_key.into(),
                sealed.nonce.into(),
                sealed.ciphertext.into(),
            ],
        )
        .await?;
        Ok(inserted == 1)
    }

    /// Removes one generation's sealed secret, or all of them.
    async fn forget(&self, id: WebhookId, generation: Option<u32>) {
        let result = match generation {
            Some(generation) => {
                exec(
                    &self.db,
                    "DELETE FROM webhook_secrets WHERE webhook_id = $1 AND generation = $2",
                    &[id.to_string().into(), generation.into()],
                )
                .await
            }
            None => {
                exec(
                    &self.db,
                    "DELETE FROM webhook_secrets WHERE webhook_id = $1",
                    &[id.to_string().into()],
                )
                .await
            }
        };
        if let Err(error) = result {
            tracing::warn!(%error, webhook = %id, "could not remove a webhook's sealed secret");
        }
    }
}
