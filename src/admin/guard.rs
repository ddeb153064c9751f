//! The one check every admin request passes before any route sees it: the page it came from
//! (`Origin`), the name it was sent to (`Host`), then the bearer token.
//!
//! A browser will send requests to the admin listener on behalf of any page it shows: a
//! cross-site form can `POST /targets/x/pause`, and a page on a name that resolves to
//! 127.0.0.1 (DNS rebinding) can even read the answers. So, whatever the route:
//!
//! - `Host` must be an IP literal, `localhost` (or a name under `.localhost`), or one of
//!   `admin.allowed_hosts`. A rebinding page always sends its own name; an IP literal cannot
//!   be rebound. A request without `Host` (not a browser) passes.
//! - `Origin`, when present, must be the admin listener itself (same host and port as `Host`)
//!   or a host in `admin.allowed_hosts` (the name a TLS proxy in front serves it under). So a
//!   page the admin listener serves can still call it, and no other page can.
//! - With a token configured, `Authorization: Bearer <token>` (compared in constant time) on
//!   everything but `/healthz` and `/readyz`, which probes call without one, and the console's
//!   page (`/`) and files (`/console/...`), which hold no data: a browser cannot send a header
//!   when it opens a page, so the page asks for the token and sends it with each call.

use hyper::header::{AUTHORIZATION, HOST, ORIGIN};
use hyper::{Request, StatusCode};
use subtle::ConstantTimeEq;

/// What the guard holds; built once from the admin config.
pub struct Guard {
    token: Option<String>,
    /// Lower-case host names, without ports.
    allowed_hosts: Vec<String>,
}

/// Why a request was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `Host` names something other than this relay (403 `host_not_allowed`).
    Host,
    /// `Origin` is another site (403 `origin_not_allowed`).
    Origin,
    /// Missing or wrong bearer token (401 `unauthorized`).
    Token,
}

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::Token => StatusCode::UNAUTHORIZED,
            Refusal::Host | Refusal::Origin => StatusCode::FORBIDDEN,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::Token => "missing or wrong bearer token",
            Refusal::Host => "this Host is not the relay's: add it to admin.allowed_hosts",
            Refusal::Origin => "requests from other sites' pages are refused",
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Refusal::Token => "unauthorized",
            Refusal::Host => "host_not_allowed",
            Refusal::Origin => "origin_not_allowed",
        }
    }
}

impl Guard {
    pub fn new(token: Option<String>, allowed_hosts: &[String]) -> Guard {
        Guard {
            token,
            allowed_hosts: allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        }
    }

    pub fn check<B>(&self, req: &Request<B>) -> Result<(), Refusal> {
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| header(req, HOST).map(str::to_owned));
        if let Some(host) = &host {
            if !self.host_allowed(host) {
                return Err(Refusal::Host);
            }
        }
        if let Some(origin) = req.headers().get(ORIGIN) {
            let origin = origin.to_str().map_err(|_| Refusal::Origin)?;
            // `scheme://host[:port]`; "null" and anything else malformed is refused.
            let authority = origin
                .split_once("://")
                .map(|(_, a)| a)
                .filter(|a| !a.is_empty() && !a.contains('/'))
                .ok_or(Refusal::Origin)?;
            let same = host
                .as_deref()
                .is_some_and(|h| h.eq_ignore_ascii_case(authority));
            let named = self.allowed_hosts.contains(&hostname(authority));
            if !same && !named {
                return Err(Refusal::Origin);
            }
        }
        if let Some(token) = &self.token {
            if needs_token(req.uri().path()) {
                let given = header(req, AUTHORIZATION)
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or("");
                if !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
                    return Err(Refusal::Token);
                }
            }
        }
        Ok(())
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = hostname(host);
        name.parse::<std::net::IpAddr>().is_ok()
            || name == "localhost"
            || name.ends_with(".localhost")
            || self.allowed_hosts.contains(&name)
    }
}

/// Everything but the probes and the console's page and files.
fn needs_token(path: &str) -> bool {
    !(matches!(path, "/healthz" | "/readyz" | "/") || path.starts_with("/console/"))
}

fn header<B>(req: &Request<B>, name: hyper::header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The host of `host[:port]` or `[v6]:port`, lower-case, without brackets or a final dot.
fn hostname(authority: &str) -> String {
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: Option<&str>, origin: Option<&str>, path: &str) -> Request<()> {
        let mut b = Request::builder().uri(path);
        if let Some(h) = host {
            b = b.header(HOST, h);
        }
        if let Some(o) = origin {
            b = b.header(ORIGIN, o);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn hosts_and_origins() {
        let g = Guard::new(None, &["Relay.Internal".into()]);
        for ok in [
            None,
            Some("127.0.0.1:9090"),
            Some("[::1]:9090"),
            Some("localhost:9090"),
            Some("a.localhost"),
            Some("10.1.2.3"),
            Some("relay.internal:443"),
            Some("RELAY.internal."),
        ] {
            assert_eq!(g.check(&req(ok, None, "/events")), Ok(()), "{ok:?}");
        }
        for bad in [
            "attacker.example",
            "localhost.attacker.example:9090",
            "127.0.0.1.nip.io",
        ] {
            assert_eq!(
                g.check(&req(Some(bad), None, "/healthz")),
                Err(Refusal::Host),
                "{bad}"
            );
        }
        let host = Some("127.0.0.1:9090");
        assert_eq!(
            g.check(&req(host, Some("http://127.0.0.1:9090"), "/")),
            Ok(())
        );
        assert_eq!(
            g.check(&req(host, Some("https://relay.internal"), "/")),
            Ok(())
        );
        for bad in [
            "https://evil.example",
            "http://127.0.0.1:3000",
            "http://localhost:9090",
            "null",
            "http://127.0.0.1:9090/x",
        ] {
            assert_eq!(
                g.check(&req(host, Some(bad), "/targets")),
                Err(Refusal::Origin),
                "{bad}"
            );
        }
    }

    #[test]
    fn token_everywhere_but_the_probes() {
        let g = Guard::new(Some("a-token-of-16-chars".into()), &[]);
        let mut r = req(Some("127.0.0.1"), None, "/events");
        assert_eq!(g.check(&r), Err(Refusal::Token));
        r.headers_mut()
            .insert(AUTHORIZATION, "Bearer a-token-of-16-chars".parse().unwrap());
        assert_eq!(g.check(&r), Ok(()));
        assert_eq!(g.check(&req(None, None, "/healthz")), Ok(()));
        assert_eq!(g.check(&req(None, None, "/readyz")), Ok(()));
        assert_eq!(g.check(&req(None, None, "/")), Ok(()));
        assert_eq!(g.check(&req(None, None, "/console/app.js")), Ok(()));
        assert_eq!(g.check(&req(None, None, "/consoles")), Err(Refusal::Token));
        // The page is still refused to a foreign Host or Origin.
        assert_eq!(
            g.check(&req(Some("attacker.example"), None, "/")),
            Err(Refusal::Host)
        );
    }
}
