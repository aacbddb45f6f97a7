//! Secrets: metadata queries and the four secret mutations.
//!
//! A value enters through `createSecret` or `rotateSecret`, is moved at once
//! into a [`Zeroizing`] buffer, sealed by the [`toolhub_eventstore::SecretVault`]
//! and never returned: no type in this schema has a value field. The input
//! fields are marked `secret`, so that async-graphql never prints them.

use async_graphql::connection::{Connection, EmptyFields};
use async_graphql::{Context, InputObject, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};
use toolhub_domain::secret::SecretCommand;
use toolhub_domain::{CommandTraits, Role, SecretId, TenantId};
use toolhub_eventstore::Committed;
use zeroize::Zeroizing;

use super::{
    caller, command_context, connection, one, page_request, parse_id, state, wait_for, Consistency,
};
use super::{execute, written, ReadBack, Written};
use crate::error::ApiError;
use crate::read::{ReadError, ReadModels, SecretView};

/// A secret's metadata. There is no value field, on purpose.
#[derive(SimpleObject)]
pub struct Secret {
    /// The secret's id.
    id: ID,
    /// The name workflows use in `{{secrets.NAME}}`.
    name: String,
    /// The description.
    description: String,
    /// How many times the value was rotated.
    rotation_count: u32,
    /// The entity's version, for `expectedVersion`.
    version: u64,
    /// Who created it.
    created_by: String,
    /// When it was created.
    created_at: DateTime<Utc>,
    /// When it last changed.
    updated_at: DateTime<Utc>,
}

impl From<SecretView> for Secret {
    fn from(v: SecretView) -> Self {
        Self {
            id: ID(v.id),
            name: v.name,
            description: v.description,
            rotation_count: v.rotation_count,
            version: v.aggregate_version,
            created_by: v.created_by,
            created_at: v.created_at,
            updated_at: v.updated_at,
        }
    }
}

/// What a secret mutation did.
#[derive(SimpleObject)]
pub struct SecretPayload {
    /// The secret's id.
    id: ID,
    /// The secret's version after the mutation.
    version: u64,
    /// The position of the mutation's last event.
    position: String,
    /// The secret's metadata as the read model shows it after the mutation;
    /// null after a deletion, or when the read model did not catch up in time.
    secret: Option<Secret>,
}

/// `createSecret` input.
#[derive(InputObject)]
pub struct CreateSecretInput {
    /// The name, `^[A-Z][A-Z0-9_]{0,63}$`.
    name: String,
    /// What the secret is for.
    #[graphql(default)]
    description: String,
    /// The value. Sealed at once, never returned, never logged.
    #[graphql(secret)]
    value: String,
}

/// `rotateSecret` input.
#[derive(InputObject)]
pub struct RotateSecretInput {
    /// The secret.
    id: ID,
    /// The new value. Sealed at once, never returned, never logged.
    #[graphql(secret)]
    value: String,
    /// Change only if the secret is at this version.
    expected_version: Option<u64>,
}

/// `describeSecret` input.
#[derive(InputObject)]
pub struct DescribeSecretInput {
    /// The secret.
    id: ID,
    /// The new description.
    description: String,
    /// Change only if the secret is at this version.
    expected_version: Option<u64>,
}

/// `deleteSecret` input.
#[derive(InputObject)]
pub struct DeleteSecretInput {
    /// The secret.
    id: ID,
    /// Delete only if the secret is at this version.
    expected_version: Option<u64>,
}

/// Secret queries (editors and admins).
#[derive(Default)]
pub struct SecretQuery;

#[Object]
impl SecretQuery {
    /// The tenant's secrets (metadata only).
    #[graphql(
        complexity = "crate::graphql::page_cost(first, crate::read::MAX_PAGE, child_complexity)"
    )]
    async fn secrets(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        consistency: Option<Consistency>,
    ) -> async_graphql::Result<Connection<String, Secret, EmptyFields, EmptyFields>> {
        let caller = caller(ctx, Role::Editor)?;
        let state = state(ctx)?;
        wait_for(state, consistency).await?;
        let had_cursor = after.is_some();
        let page = page_request(first, after)?;
        let page = state
            .read
            .secrets(&caller.tenant, &page)
            .await
            .map_err(ApiError::from)?;
        Ok(connection(page, had_cursor, Secret::from))
    }

    /// One secret's metadata. Another tenant's secret is `NOT_FOUND`, and
    /// so is a deleted one. With `asOf`, its metadata as its events up to
    /// that point made it (never a value).
    async fn secret(
        &self,
        ctx: &Context<'_>,
        id: ID,
        consistency: Option<Consistency>,
        as_of: Option<super::scalars::AsOf>,
    ) -> async_graphql::Result<Option<Secret>> {
        match as_of {
            None => one::<Secret>(ctx, Role::Editor, &id, consistency).await,
            Some(as_of) => {
                super::at::<toolhub_domain::secret::Secret, _>(
                    ctx,
                    Role::Editor,
                    &id,
                    &as_of,
                    |id, folded| {
                        let view = crate::read::as_of::secret_view(id, folded);
                        Ok((!view.deleted).then(|| Secret::from(view)))
                    },
                )
                .await
            }
        }
    }
}

/// Secret mutations (admins).
#[derive(Default)]
pub struct SecretMutation;

fn secret_id(id: &ID) -> Result<SecretId, ApiError> {
    parse_id(id, "input.id").map(SecretId::from_uuid)
}

/// The least role for secret commands: every secret command declares it.
fn secret_role() -> Role {
    SecretCommand::Delete.required_role()
}

impl ReadBack for Secret {
    const AGGREGATE: &'static str = "secret";
    const FIELD: &'static str = "secret";

    async fn read_back(
        read: &ReadModels,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<Self>, ReadError> {
        Ok(read.secret(tenant, id).await?.map(Secret::from))
    }
}

impl From<Written<Secret>> for SecretPayload {
    fn from(w: Written<Secret>) -> Self {
        Self {
            id: w.id,
            version: w.version,
            position: w.position,
            secret: w.entity,
        }
    }
}

/// Answers a secret mutation.
async fn payload(
    ctx: &Context<'_>,
    id: SecretId,
    result: Result<Committed, ApiError>,
) -> async_graphql::Result<SecretPayload> {
    Ok(written::<Secret>(ctx, id.to_string(), result).await?.into())
}

#[Object]
impl SecretMutation {
    /// Creates a secret. The value is sealed and never returned.
    async fn create_secret(
        &self,
        ctx: &Context<'_>,
        input: CreateSecretInput,
    ) -> async_graphql::Result<SecretPayload> {
        let CreateSecretInput {
            name,
            description,
            value,
        } = input;
        let value = Zeroizing::new(value);
        let caller = caller(ctx, secret_role())?;
        let state = state(ctx)?;
        let context = command_context(ctx, caller);
        let id = SecretId::new();
        let result = state
            .secrets
            .create(&context, id, name, description, value)
            .await
            .map_err(ApiError::from);
        payload(ctx, id, result).await
    }

    /// Replaces a secret's value. The value is sealed and never returned.
    async fn rotate_secret(
        &self,
        ctx: &Context<'_>,
        input: RotateSecretInput,
    ) -> async_graphql::Result<SecretPayload> {
        let RotateSecretInput {
            id,
            value,
            expected_version,
        } = input;
        let value = Zeroizing::new(value);
        let caller = caller(ctx, secret_role())?;
        let state = state(ctx)?;
        let id = secret_id(&id)?;
        let context = command_context(ctx, caller);
        let result = state
            .secrets
            .rotate(&context, id, value, expected_version)
            .await
            .map_err(ApiError::from);
        payload(ctx, id, result).await
    }

    /// Replaces a secret's description.
    async fn describe_secret(
        &self,
        ctx: &Context<'_>,
        input: DescribeSecretInput,
    ) -> async_graphql::Result<SecretPayload> {
        let command = SecretCommand::Describe {
            description: input.description,
        };
        let id = secret_id(&input.id)?;
        let bus = state(ctx)?.secrets.bus();
        let result = execute(ctx, bus, &id.to_string(), command, input.expected_version).await;
        payload(ctx, id, result).await
    }

    /// Deletes a secret: its key is destroyed, so every recorded value of it
    /// becomes unrecoverable.
    async fn delete_secret(
        &self,
        ctx: &Context<'_>,
        input: DeleteSecretInput,
    ) -> async_graphql::Result<SecretPayload> {
        let caller = caller(ctx, SecretCommand::Delete.required_role())?;
        let state = state(ctx)?;
        let id = secret_id(&input.id)?;
        let context = command_context(ctx, caller);
        let result = state
            .secrets
            .delete(&context, id, input.expected_version)
            .await
            .map_err(ApiError::from);
        payload(ctx, id, result).await
    }
}
