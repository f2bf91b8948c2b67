//! `goodhart user`: the people who may sign in to a server, and their API tokens.

use std::io::BufRead;

use anyhow::{bail, Context};

use crate::accounts::{self, MIN_PASSWORD_CHARS};
use crate::db::{self, api_tokens::Which};

#[derive(Debug, clap::Args)]
pub struct UserArgs {
    /// The server's database (`sqlite://PATH`, a path, or `postgres://…`), as `goodhart serve` takes it.
    #[arg(long, env = "GOODHART_DATABASE_URL", default_value = "sqlite://goodhart.db", global = true,
          value_parser = super::serve::parse_database_url)]
    pub database_url: String,
    #[command(subcommand)]
    pub command: UserCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum UserCommand {
    /// Adds a user who signs in with NAME and a password (asked for twice on the terminal).
    Add {
        name: String,
        /// Read the password from the first line of standard input instead.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Sets NAME's password (asked for twice on the terminal) and ends their browser sessions;
    /// their API tokens keep working.
    Password {
        name: String,
        /// Read the password from the first line of standard input instead.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Lists the users and their API tokens (ids and labels; never the tokens themselves).
    List,
    /// Removes a user, their API tokens and their sessions. Their runs keep their name.
    Remove { name: String },
    /// Prints a new API token for NAME's scripts (`Authorization: Bearer <token>`), once: only
    /// its sha256 is stored.
    Token {
        name: String,
        /// What the token is for, to tell it from the others (`goodhart user list`).
        #[arg(long)]
        label: Option<String>,
    },
    /// Revokes NAME's API tokens: one by id (`goodhart user list` shows ids), those with a
    /// label, or all of them.
    #[command(group = clap::ArgGroup::new("which").required(true))]
    RevokeToken {
        name: String,
        #[arg(group = "which")]
        id: Option<i64>,
        #[arg(long, group = "which")]
        label: Option<String>,
        #[arg(long, group = "which")]
        all: bool,
    },
}

pub fn run(args: UserArgs) -> anyhow::Result<()> {
    // The password prompt reads the terminal before any runtime starts.
    let password = match &args.command {
        UserCommand::Add { name, password_stdin } => {
            if let Some(problem) = accounts::name_problem(name) {
                bail!("{problem}");
            }
            Some(read_password(*password_stdin)?)
        }
        UserCommand::Password { password_stdin, .. } => Some(read_password(*password_stdin)?),
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let pool =
            db::connect(&args.database_url).await.with_context(|| format!("opening database {}", args.database_url))?;
        let done = command(&pool, args.command, password).await;
        pool.close().await;
        done
    })
}

async fn command(pool: &db::Pool, command: UserCommand, password: Option<String>) -> anyhow::Result<()> {
    match command {
        UserCommand::Add { name, .. } => {
            let password = password.unwrap_or_default();
            let hash = tokio::task::spawn_blocking(move || accounts::hash_password(&password)).await??;
            if db::users::add(pool, &name, &hash).await?.is_none() {
                bail!("there is already a user {name:?} (`goodhart user remove {name}` first to replace them)");
            }
            println!("added user {name}: they can sign in now");
        }
        UserCommand::Password { name, .. } => {
            let password = password.unwrap_or_default();
            let hash = tokio::task::spawn_blocking(move || accounts::hash_password(&password)).await??;
            if !db::users::set_password(pool, &name, &hash).await? {
                bail!("no user {name:?} (`goodhart user add {name}` adds them)");
            }
            println!("set the password of {name} and signed them out of every browser");
        }
        UserCommand::List => {
            let users = db::users::list(pool).await?;
            if users.is_empty() {
                println!("no users: a server on this database signs in only with its --auth-token, if it has one");
            }
            let tokens = db::api_tokens::list(pool, None).await?;
            for user in users {
                println!("{}\t(added {})", user.name, crate::http::pages::when(user.created_at));
                for t in tokens.iter().filter(|t| t.user_name == user.name) {
                    let label = t.label.as_deref().map(|l| format!(" {l:?}")).unwrap_or_default();
                    println!("  token {}{label}\t(created {})", t.id, crate::http::pages::when(t.created_at));
                }
            }
        }
        UserCommand::Remove { name } => {
            if !db::users::remove(pool, &name).await? {
                bail!("no user {name:?}");
            }
            println!("removed user {name}, their API tokens and their sessions");
        }
        UserCommand::Token { name, label } => {
            let user = db::users::by_name(pool, &name).await?.with_context(|| format!("no user {name:?}"))?;
            let token = accounts::new_secret("gdh_");
            let label = label.map(|l| l.trim().to_string()).filter(|l| !l.is_empty());
            let id = db::api_tokens::add(pool, user.id, label.as_deref(), &accounts::sha256_hex(&token)).await?;
            eprintln!("token {id} for {name}; it is shown once, keep it somewhere safe:");
            println!("{token}");
        }
        UserCommand::RevokeToken { name, id, label, all } => {
            let which = match (id, label) {
                (Some(id), _) => Which::Id(id),
                (None, Some(label)) => Which::Label(label),
                (None, None) if all => Which::All,
                (None, None) => bail!("name a token: its id, --label LABEL, or --all"),
            };
            let revoked = db::api_tokens::revoke(pool, &name, &which).await?;
            if revoked == 0 {
                bail!("{name:?} has no such token (`goodhart user list` shows each user's tokens)");
            }
            println!("revoked {revoked} token{} of {name}", if revoked == 1 { "" } else { "s" });
        }
    }
    Ok(())
}

/// A new password: the first line of standard input, or typed twice on the terminal.
fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("reading the password from standard input")?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else {
        let first = rpassword::prompt_password("Password: ").context("reading the password from the terminal")?;
        let again = rpassword::prompt_password("Again: ").context("reading the password from the terminal")?;
        if first != again {
            bail!("the two passwords differ");
        }
        first
    };
    if password.chars().count() < MIN_PASSWORD_CHARS {
        bail!("a password has at least {MIN_PASSWORD_CHARS} characters");
    }
    Ok(password)
}
