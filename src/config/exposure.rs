//! What the config exposes, and how it is protected: the admin API's listener, token and host
//! names; how long a token must be; and the warnings for a relay reachable from outside with
//! nothing guarding it.

use std::path::Path;

use toml::Spanned;

use super::{raw, AdminConfig, Config, Result, Validator};

/// The shortest token accepted (source URL tokens and the admin token): guessing one must be
/// out of reach.
pub const MIN_TOKEN_CHARS: usize = 16;

impl Validator<'_> {
    /// Refuses a token too short to be a secret.
    pub(super) fn token_strength(
        &self,
        token: &str,
        span: Option<std::ops::Range<usize>>,
        key: &str,
    ) -> Result<()> {
        let n = token.chars().count();
        if n < MIN_TOKEN_CHARS {
            return self.err(
                span,
                key,
                format!("a token must be at least {MIN_TOKEN_CHARS} characters long (this one has {n}); use a long random value"),
            );
        }
        Ok(())
    }

    pub(super) fn admin(&self, a: &raw::RawAdmin) -> Result<AdminConfig> {
        if a.enabled == Some(false) {
            return Ok(AdminConfig {
                listen: None,
                token: None,
                token_file: None,
                allowed_hosts: Vec::new(),
            });
        }
        let listen = self.listen(&a.listen, "admin.listen", 9090)?;
        let given = [
            a.token.is_some(),
            a.token_env.is_some(),
            a.token_file.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            let span = [&a.token, &a.token_env, &a.token_file]
                .iter()
                .find_map(|t| t.as_ref().map(|t| t.span()));
            return self.err(
                span,
                "admin.token",
                "set one of token, token_env or token_file",
            );
        }
        let mut token = self.secret(&a.token, &a.token_env, "admin.token", "admin.token_env")?;
        let token_file = a.token_file.as_ref().map(|f| self.path(f.get_ref()));
        if let Some(path) = &token_file {
            // Absent until the relay first starts, which creates it (see `ensure_token_file`).
            token = match read_token_file(path) {
                Ok(t) => t,
                Err(e) => {
                    return self.err(
                        a.token_file.as_ref().map(Spanned::span),
                        "admin.token_file",
                        e,
                    )
                }
            };
        }
        if let Some(t) = &token {
            let span = [&a.token, &a.token_env, &a.token_file]
                .iter()
                .find_map(|t| t.as_ref().map(|t| t.span()));
            self.token_strength(t, span, "admin.token")?;
        }
        if token.is_none() && token_file.is_none() && !listen.ip().is_loopback() {
            let span = a.listen.as_ref().map(|l| l.span());
            return self.err(span, "admin.listen", format!("{listen} is not a loopback address: set admin.token (or token_env, or token_file) before exposing the admin API"));
        }
        let mut allowed_hosts = Vec::new();
        for (i, h) in a.allowed_hosts.iter().flatten().enumerate() {
            let name = h.get_ref();
            let ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b));
            if !ok {
                return self.err(
                    Some(h.span()),
                    &format!("admin.allowed_hosts[{i}]"),
                    format!("{name:?} is not a host name (no scheme, port or path)"),
                );
            }
            allowed_hosts.push(name.clone());
        }
        Ok(AdminConfig {
            listen: Some(listen),
            token,
            token_file,
            allowed_hosts,
        })
    }
}

/// The token in a token file, or `None` when there is no file yet.
fn read_token_file(path: &Path) -> std::result::Result<Option<String>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// The admin token from `admin.token_file`, creating the file with a new random token
/// (readable by its owner only) when it does not exist yet. A file another process created
/// first is read instead.
pub fn ensure_token_file(path: &Path) -> std::io::Result<String> {
    use std::io::Write;
    if let Some(token) = read_token_file(path).map_err(std::io::Error::other)? {
        return Ok(token);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir)?;
    }
    // Two v4 UUIDs: 244 bits from the operating system's random source.
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut f) => {
            f.write_all(format!("{token}\n").as_bytes())?;
            f.sync_all()?;
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(std::fs::read_to_string(path)?.trim().to_owned())
        }
        Err(e) => Err(e),
    }
}

impl Config {
    /// What is legal but probably a mistake: a listener other machines can reach with a source
    /// anyone there may post to. `check-config` prints these and `serve` logs them.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.server.listen.ip().is_loopback() {
            for s in &self.sources {
                if s.token.is_none() && s.secrets.is_empty() {
                    out.push(format!(
                        "server.listen {} is not a loopback address and source {:?} has neither a token nor signing secrets: anyone who can reach it can store events",
                        self.server.listen, s.name
                    ));
                }
            }
        }
        out
    }
}
