//! API keys: `createApiKey`, `revokeApiKey` and `apiKeys`. A key appears
//! in the payload of the mutation that made it and nowhere else.

use async_graphql::connection::{Connection, EmptyFields};
use async_graphql::{Context, Enum, InputObject, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};
use toolhub_domain::{ApiKeyId, Role};
use toolhub_eventstore::{ApiKeyRecord, Committed};

use super::{
    caller, command_context, observe, page_cost, page_request, parse_id, payload_position, state,
};
use crate::error::ApiError;
use crate::read::MAX_PAGE;

/// A role, as API keys are given one.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(name = "ApiKeyRole")]
pub enum RoleInput {
    /// Reads workflows, executions and MCP servers.
    Viewer,
    /// Also writes them and runs executions.
    Editor,
    /// Also manages secrets, API keys, and reads the audit log.
    Admin,
}

impl From<RoleInput> for Role {
    fn from(value: RoleInput) -> Self {
        match value {
            RoleInput::Viewer => Role::Viewer,
            RoleInput::Editor => Role::Editor,
            RoleInput::Admin => Role::Admin,
        }
    }
}

impl From<Role> for RoleInput {
    fn from(value: Role) -> Self {
        match value {
            Role::Viewer => RoleInput::Viewer,
            Role::Editor => RoleInput::Editor,
            Role::Admin => RoleInput::Admin,
        }
    }
}

/// An API key, without the key: what it is for, what it may do, and when
/// it was last used.
pub struct ApiKey(pub ApiKeyRecord);

#[Object]
impl ApiKey {
    /// The key's id (not the key).
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// What it is for.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// What a caller holding it may do.
    async fn role(&self) -> RoleInput {
        self.0.role.into()
    }
    /// Who created it.
    async fn created_by(&self) -> &str {
        &self.0.created_by
    }
    /// When it was created.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// When it stops being accepted; `null`: never.
    async fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.0.expires_at
    }
    /// When it was revoked; `null` while it is not.
    async fn revoked_at(&self) -> Option<DateTime<Utc>> {
        self.0.revoked_at
    }
    /// When a request last presented it (written at most once a minute).
    async fn last_used_at(&self) -> Option<DateTime<Utc>> {
        self.0.last_used_at
    }
    /// Whether a request presenting it now is accepted.
    async fn active(&self) -> bool {
        self.0.is_valid_at(Utc::now())
    }
    /// The actor recorded with what a caller holding it does:
    /// `apikey:<id>`.
    async fn actor(&self) -> String {
        format!("apikey:{}", self.0.id)
    }
}

/// `createApiKey`'s input.
#[derive(InputObject)]
pub struct CreateApiKeyInput {
    /// What the key is for (1 to 100 characters).
    name: String,
    /// What a caller holding it may do.
    role: RoleInput,
    /// When it stops being accepted; never when absent. Must be in the
    /// future.
    expires_at: Option<DateTime<Utc>>,
}

/// `revokeApiKey`'s input.
#[derive(InputObject)]
pub struct ApiKeyIdInput {
    /// The key's id.
    id: ID,
}

/// What an API key mutation answers.
#[derive(SimpleObject)]
pub struct ApiKeyPayload {
    /// The key's id.
    id: ID,
    /// The key (`thk_…`), shown here once, by `createApiKey`, and never
    /// again; `null` for `revokeApiKey`. Send it as
    /// `Authorization: Bearer thk_…`.
    key: Option<String>,
    /// The key's version after the change.
    version: u64,
    /// Where the change is in the log.
    position: String,
    /// The key as it stands after the change.
    api_key: Option<ApiKey>,
}

fn api_key_id(id: &ID) -> Result<ApiKeyId, ApiError> {
    parse_id(id, "input.id").map(ApiKeyId::from_uuid)
}

/// API key queries.
#[derive(Default)]
pub struct ApiKeyQuery;

#[Object]
impl ApiKeyQuery {
    /// The organisation's API keys, newest first, revoked ones included.
    /// Admin only.
    #[graphql(complexity = "page_cost(first, MAX_PAGE, child_complexity)")]
    async fn api_keys(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, ApiKey, EmptyFields, EmptyFields>> {
        let caller = caller(ctx, Role::Admin)?;
        let page = page_request(first, after)?;
        let after = match &page.after {
            None => None,
            Some(cursor) => Some(
                cursor
                    .0
                    .parse::<ApiKeyId>()
                    .map_err(|_| ApiError::validation("after", "not a cursor of this list"))?,
            ),
        };
        let (keys, more) = state(ctx)?
            .api_keys
            .list(&caller.tenant, page.first, after)
            .await
            .map_err(ApiError::from)?;
        let mut connection = Connection::new(after.is_some(), more);
        connection.edges.extend(
            keys.into_iter()
                .map(|k| async_graphql::connection::Edge::new(k.id.to_string(), ApiKey(k))),
        );
        Ok(connection)
    }

    /// One API key of the organisation. Admin only.
    async fn api_key(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<ApiKey>> {
        let caller = caller(ctx, Role::Admin)?;
        let id = parse_id(&id, "id").map(ApiKeyId::from_uuid)?;
        let key = state(ctx)?
            .api_keys
            .get(&caller.tenant, id)
            .await
            .map_err(ApiError::from)?
            .ok_or(ApiError::NotFound)?;
        Ok(Some(ApiKey(key)))
    }
}

/// API key mutations.
#[derive(Default)]
pub struct ApiKeyMutation;

impl ApiKeyMutation {
    /// The payload of a committed key command. The key table is written
    /// in the command's own commit, so the key is read back at once,
    /// without waiting for the read models.
    async fn payload(
        ctx: &Context<'_>,
        id: ApiKeyId,
        key: Option<String>,
        committed: Committed,
    ) -> async_graphql::Result<ApiKeyPayload> {
        let state = state(ctx)?;
        let caller = caller(ctx, Role::Admin)?;
        let committed = observe(state, "api_key", Ok(committed))?;
        let position = payload_position(state, &committed).await?;
        let api_key = state
            .api_keys
            .get(&caller.tenant, id)
            .await
            .map_err(ApiError::from)?
            .map(ApiKey);
        Ok(ApiKeyPayload {
            id: ID(id.to_string()),
            key,
            version: committed.version,
            position: position.to_string(),
            api_key,
        })
    }
}

#[Object]
impl ApiKeyMutation {
    /// Makes an API key for machines. The answer holds the key, which is
    /// shown this once; only its hash is kept. Admin only; the key's role
    /// may be any.
    async fn create_api_key(
        &self,
        ctx: &Context<'_>,
        input: CreateApiKeyInput,
    ) -> async_graphql::Result<ApiKeyPayload> {
        let caller = caller(ctx, Role::Admin)?;
        let context = command_context(ctx, caller);
        let state = state(ctx)?;
        let result = state
            .api_keys
            .create(&context, input.name, input.role.into(), input.expires_at)
            .await;
        match result {
            Ok((id, key, committed)) => {
                Self::payload(ctx, id, Some(key.as_str().to_string()), committed).await
            }
            Err(error) => Err(refused(state, error)),
        }
    }

    /// Revokes an API key: requests presenting it are refused from now on
    /// (on other replicas within seconds). Admin only.
    async fn revoke_api_key(
        &self,
        ctx: &Context<'_>,
        input: ApiKeyIdInput,
    ) -> async_graphql::Result<ApiKeyPayload> {
        let caller = caller(ctx, Role::Admin)?;
        let context = command_context(ctx, caller);
        let id = api_key_id(&input.id)?;
        let state = state(ctx)?;
        let result = state.api_keys.revoke(&context, id).await;
        state.auth.forget_keys();
        match result {
            Ok(committed) => Self::payload(ctx, id, None, committed).await,
            Err(error) => Err(refused(state, error)),
        }
    }
}

/// A refused key command, counted like every command.
fn refused(
    state: &crate::state::AppState,
    error: toolhub_eventstore::CommandError<toolhub_domain::api_key::ApiKeyError>,
) -> async_graphql::Error {
    match observe(state, "api_key", Err(ApiError::from(error))) {
        Err(error) => error.into(),
        Ok(_) => ApiError::internal("a refused command committed").into(),
    }
}
