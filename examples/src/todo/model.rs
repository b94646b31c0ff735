//! What the service keeps and says: todos, workspaces, accounts, and the events.

use super::*;

/// A todo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Todo {
    /// Its id.
    pub id: String,
    /// The workspace it belongs to.
    pub workspace_id: String,
    /// What to do.
    pub title: String,
    /// Whether it is done.
    pub done: bool,
    /// When it was created (Unix milliseconds).
    pub created_at: i64,
    /// When it last changed (Unix milliseconds).
    pub updated_at: i64,
}

impl Todo {
    /// A new, open todo in `workspace_id`, created now.
    pub fn new(workspace_id: &str, title: String) -> Self {
        let now = super::now_ms();
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            workspace_id: workspace_id.to_owned(),
            title,
            done: false,
            created_at: now,
            updated_at: now,
        }
    }
}

/// A workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Workspace {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
}

/// An email and a password (and, once TOTP is on, the code of the user's app).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Credentials {
    /// The email address: up to 254 characters, one `@`, a dot in the domain, no
    /// spaces or control characters.
    #[schema(
        max_length = 254,
        pattern = r"^[^@ \u0000-\u001F\u007F-\u009F]+@[^@ \u0000-\u001F\u007F-\u009F]+\.[^@ \u0000-\u001F\u007F-\u009F]+$"
    )]
    pub email: String,
    /// The password (8 to 256 characters).
    #[schema(min_length = 8, max_length = 256)]
    pub password: String,
    /// The 6-digit code of the user's authenticator app, when TOTP is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp: Option<String>,
}

/// TOTP being turned on: the URI the user's app scans.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TotpEnrolment {
    /// `otpauth://totp/…`, for a QR code.
    pub otpauth_uri: String,
}

/// A code of the user's app.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TotpCode {
    /// The 6-digit code.
    #[schema(pattern = "^[0-9]{6}$")]
    pub code: String,
}

/// A registered user.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct User {
    /// Its id.
    pub id: String,
    /// Its email address.
    pub email: String,
}

/// An access token.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Token {
    /// The bearer token.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds it is good for.
    pub expires_in: u64,
}

/// What creating a workspace takes.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewWorkspace {
    /// Its name (1 to 200 characters, no control characters).
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$")]
    pub name: String,
}

/// What creating a todo takes.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewTodo {
    /// What to do (1 to 500 characters, no control characters).
    #[schema(min_length = 1, max_length = 500, pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$")]
    pub title: String,
}

/// What changing a todo takes; absent fields stay.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TodoPatch {
    /// A new title (1 to 500 characters, no control characters).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 500, pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$")]
    pub title: Option<String>,
    /// Done or not.
    #[serde(default)]
    pub done: Option<bool>,
}

macro_rules! todo_event {
    ($name:ident, $type:literal) => {
        /// A todo event.
        #[derive(Debug, Clone, Serialize, Deserialize)]
        pub struct $name {
            /// The todo as it is after the change.
            pub todo: Todo,
        }

        impl Event for $name {
            const TYPE: &'static str = $type;
            const VERSION: u32 = 1;
        }
    };
}

todo_event!(TodoCreated, "todo.created");
todo_event!(TodoUpdated, "todo.updated");
todo_event!(TodoCompleted, "todo.completed");
todo_event!(TodoDeleted, "todo.deleted");
