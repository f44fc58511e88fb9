//! The database roles of a deployment (`taskbot setup-users` makes them):
//!
//! - `<prefix>_owner` owns the schema. Nobody logs in as it: an administrator acts as it
//!   (`SET ROLE`) to run the migrations, so the schema can change only through `setup-users`.
//! - `<prefix>_reporter` logs in and may read, insert and update the store's tables (the reporter
//!   never deletes), but not create, alter or drop any.
//! - `<prefix>_api` logs in and may only read them.
//!
//! `CREATE` on the `public` schema is taken from `PUBLIC` (PostgreSQL before 15 grants it to
//! everyone), so neither login role can create a table of its own either.

use tokio_postgres::Client;

use super::schema::TABLES;
use crate::config::PostgresConfig;

/// The names of one deployment's roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleNames {
    pub owner: String,
    pub reporter: String,
    pub api: String,
}

impl RoleNames {
    /// `<prefix>_owner`, `<prefix>_reporter`, `<prefix>_api`, with every character of `prefix`
    /// (a broker namespace such as `test-3f2a`) that is not a lower-case letter or digit made `_`.
    pub fn new(prefix: &str) -> RoleNames {
        let prefix: String = prefix
            .chars()
            .map(|c| {
                let c = c.to_ascii_lowercase();
                if c.is_ascii_alphanumeric() {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        RoleNames {
            owner: format!("{prefix}_owner"),
            reporter: format!("{prefix}_reporter"),
            api: format!("{prefix}_api"),
        }
    }

    fn all(&self) -> [&str; 3] {
        [&self.owner, &self.reporter, &self.api]
    }
}

/// `"name"`: an identifier quoted for SQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'`: a string literal for SQL.
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Make (or update) the roles, with these passwords for the two that log in, and let them reach
/// `database`. Run as an administrator connected to `database`; call [`grant`] after migrating.
pub async fn create(
    admin: &Client,
    database: &str,
    names: &RoleNames,
    reporter_password: &str,
    api_password: &str,
) -> Result<(), tokio_postgres::Error> {
    let logins = [
        (&names.reporter, Some(reporter_password)),
        (&names.api, Some(api_password)),
        (&names.owner, None),
    ];
    for (role, password) in logins {
        let exists = admin
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[role])
            .await?
            .is_some();
        let verb = if exists { "ALTER" } else { "CREATE" };
        let how = match password {
            Some(p) => format!("LOGIN PASSWORD {}", quote_literal(p)),
            None => "NOLOGIN".into(),
        };
        admin
            .batch_execute(&format!("{verb} ROLE {} {how}", quote_ident(role)))
            .await?;
    }
    let (owner, reporter, api) = (
        quote_ident(&names.owner),
        quote_ident(&names.reporter),
        quote_ident(&names.api),
    );
    admin
        .batch_execute(&format!(
            "GRANT {owner} TO CURRENT_USER;
             REVOKE CREATE ON SCHEMA public FROM PUBLIC;
             GRANT USAGE, CREATE ON SCHEMA public TO {owner};
             GRANT USAGE ON SCHEMA public TO {reporter}, {api};
             GRANT CONNECT ON DATABASE {} TO {reporter}, {api};
             {}",
            quote_ident(database),
            adopt_tables(&owner)
        ))
        .await
}

/// Hand the store's tables that already exist to the owner: a database migrated before the
/// roles existed (by an administrator), or whose roles `setup-users --delete` removed, has them
/// owned by someone else, and the owner could then neither migrate nor grant them. Their serial
/// columns' sequences follow their tables.
fn adopt_tables(owner: &str) -> String {
    super::schema::TABLES
        .iter()
        .map(|table| {
            format!(
                "ALTER TABLE IF EXISTS {} OWNER TO {owner};",
                quote_ident(table)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Grant the reporter and the api what they may do on the store's tables (made by the
/// migrations, as the owner), and on tables a later migration makes.
pub async fn grant(admin: &Client, names: &RoleNames) -> Result<(), tokio_postgres::Error> {
    let (owner, reporter, api) = (
        quote_ident(&names.owner),
        quote_ident(&names.reporter),
        quote_ident(&names.api),
    );
    let tables = TABLES.join(", ");
    admin
        .batch_execute(&format!(
            "GRANT SELECT, INSERT, UPDATE ON {tables} TO {reporter};
             GRANT SELECT ON {tables} TO {api};
             GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {reporter};
             ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public
                 GRANT SELECT, INSERT, UPDATE ON TABLES TO {reporter};
             ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public
                 GRANT USAGE, SELECT ON SEQUENCES TO {reporter};
             ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public
                 GRANT SELECT ON TABLES TO {api};"
        ))
        .await
}

/// Remove the roles. What they owned in the database `admin` is connected to (the schema) passes
/// to the administrator, so the results stay; privileges they held there go. Roles that do not
/// exist are skipped. A role still owning objects in another database is not dropped (an error).
pub async fn drop_all(admin: &Client, names: &RoleNames) -> Result<(), tokio_postgres::Error> {
    let mut existing = Vec::new();
    for role in names.all() {
        let row = admin
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
            .await?;
        if row.is_some() {
            existing.push(quote_ident(role));
        }
    }
    if existing.is_empty() {
        return Ok(());
    }
    let list = existing.join(", ");
    // One role at a time: PostgreSQL fails ("could not find tuple for default ACL") dropping in
    // one statement the owner's default privileges and the grants they name.
    let each: Vec<String> = existing
        .iter()
        .map(|r| format!("DROP OWNED BY {r};"))
        .collect();
    admin
        .batch_execute(&format!(
            "REASSIGN OWNED BY {list} TO CURRENT_USER; {} DROP ROLE {list};",
            each.join(" ")
        ))
        .await
}

/// The database config acting as role `role` (`SET ROLE` at connection, through libpq's
/// `options`): how an administrator runs the migrations as the schema's owner.
pub fn acting_as(config: &PostgresConfig, role: &str) -> PostgresConfig {
    let option = format!("-c role={role}");
    let url = &config.url;
    let url = if url.contains("://") {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!(
            "{url}{separator}options={}",
            option.replace(' ', "%20").replace('=', "%3D")
        )
    } else {
        format!("{url} options='{option}'")
    };
    PostgresConfig {
        url,
        pool_size: 1,
        ..config.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_come_from_the_namespace() {
        let names = RoleNames::new("test-3F2a.x");
        assert_eq!(names.owner, "test_3f2a_x_owner");
        assert_eq!(names.reporter, "test_3f2a_x_reporter");
        assert_eq!(names.api, "test_3f2a_x_api");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn acting_as_a_role_adds_it_to_the_options() {
        let config = PostgresConfig {
            url: "postgres://postgres@db/taskbot".into(),
            ..Default::default()
        };
        let owner = acting_as(&config, "tb_owner");
        assert_eq!(
            owner.url,
            "postgres://postgres@db/taskbot?options=-c%20role%3Dtb_owner"
        );
        let parsed: tokio_postgres::Config = owner.url.parse().unwrap();
        assert_eq!(parsed.get_options(), Some("-c role=tb_owner"));
    }
}
