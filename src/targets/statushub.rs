//! `statushub`: StatusHub's keyed `victor_ops` hook, driven the way the VictorOps + StatusHub
//! setup drives it. A rule sets the StatusHub service key on the alert (`StatusHubfield` by
//! default); the target posts the VictorOps blank-payload body (flat `ALERT.*`, `STATE.*`,
//! `INCIDENT.*` keys, original key case) to the hook URL with the key as `token`. An alert no
//! rule keyed has no value for the URL variable, so its delivery is skipped, never sent.
//!
//! It is a `webhook` with these defaults; `url`, `template`/`body` and `headers` can be set to
//! override them.

/// The alert field holding the StatusHub service key, unless `key_field` says otherwise.
pub const DEFAULT_KEY_FIELD: &str = "StatusHubfield";

/// The hook URL; `{key_field}` is replaced by the configured key field.
pub const DEFAULT_URL: &str =
    "https://hooks.statushub.io/hooks/victor_ops?token=${{ALERT.{key_field}}}";

/// The default body: the flat VictorOps variable map.
pub const DEFAULT_BODY: &str = include_str!("../../templates/statushub.json.hbs");
