//! Workspace and user administration on the store directly: the `switchboard admin ...`
//! helpers, the user creation behind `admin.users.create`, and the idempotent dev seed.

use std::path::Path;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use shared::auth::{Claims, TokenSigner};
use shared::ids::{ChannelId, Ts, WorkspaceId};
use shared::store::{Channel, SharedStore, StorageErrorKind, User, Workspace};

use crate::api::ApiError;

/// Name of the channel every workspace member joins on creation.
pub const GENERAL: &str = "general";
/// Longest user or workspace name.
pub const MAX_NAME: usize = 80;

/// The dev seed: workspace, users (name, real name, admin) and their shared channel.
const DEMO_WORKSPACE: &str = "demo";
const DEMO_USERS: &[(&str, &str, bool)] = &[
    ("alice", "Alice", true),
    ("bob", "Bob", false),
    ("carol", "Carol", false),
];
/// File under the data dir where the seed writes its ids and tokens.
pub const TOKENS_FILE: &str = "tokens.json";

/// User and workspace names: 1 to 80 of lower-case letters, digits, `.`, `-` and `_`.
pub fn validate_user_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() {
        return Err(ApiError::InvalidNameRequired);
    }
    if name.chars().count() > MAX_NAME {
        return Err(ApiError::InvalidNameMaxlength { max: MAX_NAME });
    }
    if !name.bytes().all(|b| {
        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-' || b == b'_'
    }) {
        return Err(ApiError::InvalidNameSpecials);
    }
    Ok(())
}

fn now_secs() -> u64 {
    Ts::now().0 / 1_000_000
}

/// A token for `user`; `admin` makes it an admin token (only for admin users).
pub fn token_for(signer: &TokenSigner, user: &User, admin: bool) -> String {
    signer.issue(&Claims {
        workspace: user.workspace.clone(),
        user: user.id.clone(),
        admin: admin && user.is_admin,
        // A bot user's token is a bot token (`xoxb-`), as in Slack.
        bot: user.is_bot,
        issued_at: now_secs(),
        service: false,
    })
}

/// Adds `user` to its workspace's #general, if there is one.
async fn join_general(store: &SharedStore, user: &User) -> Result<(), ApiError> {
    if let Some(general) = store.channel_by_name(&user.workspace, GENERAL).await? {
        store.add_member(&general.id, &user.id).await?;
    }
    Ok(())
}

/// Who [`create_user_in`] creates.
pub(crate) struct NewUser<'a> {
    pub name: &'a str,
    pub real_name: &'a str,
    pub is_admin: bool,
    /// A bot user: its token is a bot token and its messages carry `bot_id`.
    pub is_bot: bool,
    /// Checked already ([`crate::methods::parse_email`]).
    pub email: Option<&'a str>,
}

/// Creates a user in `workspace`, joins it to #general, gives it its email, and issues its
/// token (an admin token for an admin). A user that could not join or take its email is
/// removed again, so the call can be repeated.
pub(crate) async fn create_user_in(
    store: &SharedStore,
    signer: &TokenSigner,
    workspace: &WorkspaceId,
    new: NewUser<'_>,
) -> Result<(User, String), ApiError> {
    let NewUser {
        name,
        real_name,
        is_admin,
        is_bot,
        email,
    } = new;
    validate_user_name(name)?;
    if let Some(email) = email {
        if store.user_by_email(workspace, email).await?.is_some() {
            return Err(ApiError::EmailTaken);
        }
    }
    let mut user = match store
        .create_user(workspace, name, real_name, is_admin, is_bot)
        .await
    {
        Ok(user) => user,
        Err(e) if e.kind == StorageErrorKind::AlreadyExists => return Err(ApiError::NameTaken),
        Err(e) => return Err(e.into()),
    };
    if let Err(e) = join_general(store, &user).await {
        // Undone, so that the call can be made again: a user left without its token could
        // not be created again (`name_taken`) nor signed in. A join that stopped part way
        // (the CQL store writes a membership in two tables) is taken back first: the user's
        // own list of channels may not name it.
        if let Ok(Some(general)) = store.channel_by_name(&user.workspace, GENERAL).await {
            let _ = store.remove_member(&general.id, &user.id).await;
        }
        if let Err(undo) = store.delete_user(&user.id).await {
            tracing::error!(user = %user.id, name, error = %undo,
                "a new user could not join #general and could not be removed: issue its token with `switchboard admin issue-token`");
        }
        return Err(e);
    }
    if let Some(email) = email {
        match crate::methods::set_email(store, &user.id, email).await {
            Ok(with_email) => user = with_email,
            Err(e) => {
                // Taken meanwhile (or not stored): the user goes again, as a failed join does.
                if let Ok(Some(general)) = store.channel_by_name(&user.workspace, GENERAL).await {
                    let _ = store.remove_member(&general.id, &user.id).await;
                }
                if let Err(undo) = store.delete_user(&user.id).await {
                    tracing::warn!(user = %user.id, error = %undo, "could not remove a user whose email was refused");
                }
                return Err(e);
            }
        }
    }
    let token = token_for(signer, &user, is_admin);
    Ok((user, token))
}

/// Creates a workspace; fails if the name is taken or malformed.
pub async fn create_workspace(store: &SharedStore, name: &str) -> anyhow::Result<Workspace> {
    validate_user_name(name)
        .map_err(|e| anyhow::anyhow!("invalid workspace name {name:?}: {e}"))?;
    match store.create_workspace(name).await {
        Ok(ws) => Ok(ws),
        Err(e) if e.kind == StorageErrorKind::AlreadyExists => {
            bail!("workspace name {name:?} is taken")
        }
        Err(e) => Err(e).context("failed to create workspace"),
    }
}

async fn workspace_named(store: &SharedStore, name: &str) -> anyhow::Result<Workspace> {
    store
        .workspace_by_name(name)
        .await
        .context("failed to read workspace")?
        .with_context(|| format!("no workspace named {name:?}"))
}

/// What kind of user [`create_user`] makes.
#[derive(Clone, Copy, Debug, Default)]
pub struct UserKind<'a> {
    /// An admin: its token is an admin token.
    pub admin: bool,
    /// A bot user: its token is a bot token (`xoxb-`), its messages carry `bot_id`.
    pub bot: bool,
    /// Its email (unique in the workspace), for `users.lookupByEmail`.
    pub email: Option<&'a str>,
}

/// Creates a user in the named workspace, joins it to the workspace's #general if it exists,
/// gives it its email if one is given, and returns it with its token.
pub async fn create_user(
    store: &SharedStore,
    signer: &TokenSigner,
    workspace_name: &str,
    user_name: &str,
    kind: UserKind<'_>,
) -> anyhow::Result<(User, String)> {
    let UserKind { admin, bot, email } = kind;
    if admin && bot {
        bail!("a bot cannot be an admin");
    }
    let email = email
        .map(crate::methods::parse_email)
        .transpose()
        .map_err(|_| anyhow::anyhow!("invalid email {:?}", email.unwrap_or_default()))?;
    let ws = workspace_named(store, workspace_name).await?;
    let new = NewUser {
        name: user_name,
        real_name: user_name,
        is_admin: admin,
        is_bot: bot,
        email: email.as_deref(),
    };
    create_user_in(store, signer, &ws.id, new)
        .await
        .map_err(|e| match e {
            ApiError::NameTaken => {
                anyhow::anyhow!("user {user_name:?} already exists in {workspace_name:?}")
            }
            ApiError::EmailTaken => anyhow::anyhow!(
                "email {:?} is another user's in {workspace_name:?}",
                email.as_deref().unwrap_or_default()
            ),
            other => anyhow::anyhow!("failed to create user {user_name:?}: {other}"),
        })
}

/// Issues a new token for an existing user (an admin token for an admin user).
pub async fn issue_token(
    store: &SharedStore,
    signer: &TokenSigner,
    workspace_name: &str,
    user_name: &str,
) -> anyhow::Result<String> {
    let ws = workspace_named(store, workspace_name).await?;
    let user = store
        .user_by_name(&ws.id, user_name)
        .await
        .context("failed to read user")?
        .with_context(|| format!("no user named {user_name:?} in {workspace_name:?}"))?;
    Ok(token_for(signer, &user, user.is_admin))
}

async fn ensure_workspace(store: &SharedStore, name: &str) -> anyhow::Result<Workspace> {
    if let Some(ws) = store.workspace_by_name(name).await? {
        return Ok(ws);
    }
    match store.create_workspace(name).await {
        Ok(ws) => Ok(ws),
        // Another process seeded meanwhile.
        Err(e) if e.kind == StorageErrorKind::AlreadyExists => workspace_named(store, name).await,
        Err(e) => Err(e.into()),
    }
}

async fn ensure_user(
    store: &SharedStore,
    ws: &WorkspaceId,
    name: &str,
    real_name: &str,
    admin: bool,
) -> anyhow::Result<User> {
    if let Some(u) = store.user_by_name(ws, name).await? {
        return Ok(u);
    }
    match store.create_user(ws, name, real_name, admin, false).await {
        Ok(u) => Ok(u),
        Err(e) if e.kind == StorageErrorKind::AlreadyExists => store
            .user_by_name(ws, name)
            .await?
            .with_context(|| format!("user {name:?} exists but cannot be read")),
        Err(e) => Err(e.into()),
    }
}

async fn ensure_general(
    store: &SharedStore,
    ws: &WorkspaceId,
    creator: &User,
) -> anyhow::Result<Channel> {
    if let Some(c) = store.channel_by_name(ws, GENERAL).await? {
        return Ok(c);
    }
    let channel = Channel {
        id: ChannelId::generate(),
        workspace: ws.clone(),
        name: GENERAL.to_string(),
        is_private: false,
        creator: creator.id.clone(),
        created: Ts::now(),
        topic: "Company-wide announcements and work-based matters".to_string(),
        purpose: "This channel is for workspace-wide communication".to_string(),
        is_archived: false,
    };
    match store.create_channel(&channel).await {
        Ok(()) => Ok(channel),
        Err(e) if e.kind == StorageErrorKind::AlreadyExists => store
            .channel_by_name(ws, GENERAL)
            .await?
            .context("#general exists but cannot be read"),
        Err(e) => Err(e.into()),
    }
}

/// The token recorded for `user` in an earlier `tokens.json`, if it still verifies as that
/// user (with the given admin flag) under `signer`.
fn kept_token(
    signer: &TokenSigner,
    earlier: &Value,
    path: &[&str],
    user: &User,
    admin: bool,
) -> Option<String> {
    let mut v = earlier;
    for key in path {
        v = v.get(key)?;
    }
    let token = v.as_str()?;
    let claims = signer.verify(token).ok()?;
    (claims.user == user.id && claims.workspace == user.workspace && claims.admin == admin)
        .then(|| token.to_string())
}

/// Seeds the dev workspace `demo` (users alice (admin), bob and carol, all in public
/// #general) and writes `<data_dir>/tokens.json`, which it also returns:
/// `{"workspace":"T…","admin":"<alice's admin token>","users":{"alice":{"id":"U…","token":"xoxp-…"},…}}`.
///
/// Idempotent: on a seeded store it reuses the stored ids, and keeps the tokens of an earlier
/// `tokens.json` that still verify (else issues new ones).
pub async fn seed_demo(
    store: &SharedStore,
    signer: &TokenSigner,
    data_dir: &Path,
) -> anyhow::Result<Value> {
    let path = data_dir.join(TOKENS_FILE);
    let earlier: Value = std::fs::read(&path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(Value::Null);

    let ws = ensure_workspace(store, DEMO_WORKSPACE)
        .await
        .context("failed to seed the demo workspace")?;
    let mut users = Vec::new();
    for (name, real_name, admin) in DEMO_USERS {
        let user = ensure_user(store, &ws.id, name, real_name, *admin)
            .await
            .with_context(|| format!("failed to seed user {name}"))?;
        users.push(user);
    }
    let general = ensure_general(store, &ws.id, &users[0])
        .await
        .context("failed to seed #general")?;
    for user in &users {
        store
            .add_member(&general.id, &user.id)
            .await
            .context("failed to seed #general's members")?;
    }

    let mut user_tokens = serde_json::Map::new();
    for user in &users {
        let token = kept_token(
            signer,
            &earlier,
            &["users", &user.name, "token"],
            user,
            false,
        )
        .unwrap_or_else(|| token_for(signer, user, false));
        user_tokens.insert(user.name.clone(), json!({ "id": user.id, "token": token }));
    }
    let admin_user = users
        .iter()
        .find(|u| u.is_admin)
        .context("the demo workspace has no admin")?;
    let admin = kept_token(signer, &earlier, &["admin"], admin_user, true)
        .unwrap_or_else(|| token_for(signer, admin_user, true));
    let seeded = json!({
        "workspace": ws.id,
        "general": general.id,
        "admin": admin,
        "users": user_tokens,
    });

    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("failed to create {}", data_dir.display()))?;
    write_private(&path, &serde_json::to_vec_pretty(&seeded)?)
        .with_context(|| format!("failed to write {}", path.display()))?;
    Ok(seeded)
}

/// Writes a file of secrets readable by its owner only, through a rename so that a reader
/// never sees half of it.
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
    // Made anew with mode 0600, so the tokens are never readable by others, not even until a
    // chmod (a leftover of an earlier run with this pid would keep its own mode).
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(&tmp)?.write_all(contents)?;
    std::fs::rename(&tmp, path)
}
