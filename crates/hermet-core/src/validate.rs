//! Input parsed into types that only hold valid values ("parse, don't validate").
//!
//! The API turns request fields into these at the boundary; the store takes only these types, so
//! nothing past the boundary re-checks a nickname or a content length.

use std::time::Duration;

use serde::Deserialize;

/// Longest wait a setting may ask for (the configuration's `*_ms` keys, benchmark options):
/// waits are added to clock readings, and an absurd one would overflow them.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);

/// Why an input was refused. The message is safe to show to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: &'static str,
    pub reason: String,
}

impl Invalid {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Invalid {
            field,
            reason: reason.into(),
        }
    }
}

/// Input limits, from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Nicknames and group names, in characters after trimming.
    pub max_name_chars: usize,
    /// Remark and contact-group names, in characters.
    pub max_remark_chars: usize,
    /// Avatar URLs, in bytes.
    pub max_avatar_bytes: usize,
    /// Message content, in characters.
    pub max_content_chars: usize,
    /// Members of a group, owner included.
    pub max_group_members: usize,
    /// Message types are short identifiers.
    pub max_type_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_name_chars: 64,
            max_remark_chars: 64,
            max_avatar_bytes: 512,
            max_content_chars: 4000,
            max_group_members: 100_000,
            max_type_chars: 32,
        }
    }
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// A nickname or group name: 1–`max_name_chars` characters after trimming, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(String);

impl Name {
    pub fn parse(field: &'static str, raw: &str, limits: &Limits) -> Result<Self, Invalid> {
        let s = raw.trim();
        let n = s.chars().count();
        if n == 0 {
            return Err(Invalid::new(field, "must not be empty"));
        }
        if n > limits.max_name_chars {
            return Err(Invalid::new(
                field,
                format!("must be at most {} characters", limits.max_name_chars),
            ));
        }
        if has_control(s) {
            return Err(Invalid::new(field, "must not contain control characters"));
        }
        Ok(Name(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An avatar URL: empty (no avatar) or an `http(s)://` URL without spaces or control characters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Avatar(String);

impl Avatar {
    pub fn parse(raw: &str, limits: &Limits) -> Result<Self, Invalid> {
        let s = raw.trim();
        if s.is_empty() {
            return Ok(Avatar(String::new()));
        }
        if s.len() > limits.max_avatar_bytes {
            return Err(Invalid::new(
                "avatar",
                format!("must be at most {} bytes", limits.max_avatar_bytes),
            ));
        }
        let lower = s.to_ascii_lowercase();
        if !(lower.starts_with("https://") || lower.starts_with("http://")) {
            return Err(Invalid::new("avatar", "must be an http or https URL"));
        }
        if has_control(s) || s.chars().any(char::is_whitespace) {
            return Err(Invalid::new(
                "avatar",
                "must not contain spaces or control characters",
            ));
        }
        Ok(Avatar(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The product's own id of a user (`POST /v1/server/users`): 1–[`ExternalId::MAX_CHARS`]
/// characters, kept exactly as sent — it is an opaque key, so leading or trailing whitespace is
/// refused rather than trimmed (trimming would make two ids one user), as are control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalId(String);

impl ExternalId {
    pub const MAX_CHARS: usize = 256;

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        const FIELD: &str = "external_id";
        let n = raw.chars().count();
        if n == 0 {
            return Err(Invalid::new(FIELD, "must not be empty"));
        }
        if n > Self::MAX_CHARS {
            return Err(Invalid::new(
                FIELD,
                format!("must be at most {} characters", Self::MAX_CHARS),
            ));
        }
        if has_control(raw) {
            return Err(Invalid::new(FIELD, "must not contain control characters"));
        }
        if raw.trim() != raw {
            return Err(Invalid::new(FIELD, "must not start or end with whitespace"));
        }
        Ok(ExternalId(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The name an operator gives an API key: 1–[`KeyName::MAX_CHARS`] characters after trimming,
/// no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyName(String);

impl KeyName {
    pub const MAX_CHARS: usize = 64;

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let limits = Limits {
            max_name_chars: Self::MAX_CHARS,
            ..Limits::default()
        };
        Name::parse("name", raw, &limits).map(|n| KeyName(n.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A remark or contact-group name: empty clears it; otherwise at most `max_remark_chars`
/// characters after trimming, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Label(String);

impl Label {
    pub fn parse(field: &'static str, raw: &str, limits: &Limits) -> Result<Self, Invalid> {
        let s = raw.trim();
        if s.chars().count() > limits.max_remark_chars {
            return Err(Invalid::new(
                field,
                format!("must be at most {} characters", limits.max_remark_chars),
            ));
        }
        if has_control(s) {
            return Err(Invalid::new(field, "must not contain control characters"));
        }
        Ok(Label(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Message content: 1–`max_content_chars` characters, not only whitespace. Line breaks and tabs
/// are allowed; other control characters are not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content(String);

impl Content {
    pub fn parse(raw: &str, limits: &Limits) -> Result<Self, Invalid> {
        if raw.trim().is_empty() {
            return Err(Invalid::new("content", "must not be empty"));
        }
        if raw.chars().count() > limits.max_content_chars {
            return Err(Invalid::new(
                "content",
                format!("must be at most {} characters", limits.max_content_chars),
            ));
        }
        if raw
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
        {
            return Err(Invalid::new(
                "content",
                "must not contain control characters",
            ));
        }
        Ok(Content(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A message type: a short lowercase identifier (`text`, `image`, `file`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageType(String);

impl MessageType {
    pub fn parse(raw: &str, limits: &Limits) -> Result<Self, Invalid> {
        let ok = !raw.is_empty()
            && raw.len() <= limits.max_type_chars
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(MessageType(raw.to_owned()))
        } else {
            Err(Invalid::new(
                "type",
                format!(
                    "must be 1-{} characters of a-z, 0-9 and _",
                    limits.max_type_chars
                ),
            ))
        }
    }

    pub fn text() -> Self {
        MessageType("text".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Ids one call may name (adding members, creating a group): larger memberships are built in
/// several calls, so one command's transaction stays short.
pub const MAX_IDS_PER_CALL: usize = 1000;

/// A list of user ids for a group: at most [`MAX_IDS_PER_CALL`], each a positive id, and, when
/// `distinct`, none named twice (a repeated id is a client mistake worth reporting: nothing is
/// applied).
pub fn member_ids(field: &'static str, ids: &[i64], distinct: bool) -> Result<Vec<i64>, Invalid> {
    if ids.len() > MAX_IDS_PER_CALL {
        return Err(Invalid::new(
            field,
            format!(
                "at most {MAX_IDS_PER_CALL} ids per call, got {}; add the rest in further calls",
                ids.len()
            ),
        ));
    }
    let ids = ids
        .iter()
        .map(|&raw| id(field, raw))
        .collect::<Result<Vec<_>, _>>()?;
    if distinct {
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = ids.iter().find(|&&i| !seen.insert(i)) {
            return Err(Invalid::new(field, format!("user {dup} is named twice")));
        }
    }
    Ok(ids)
}

/// A positive 64-bit id.
pub fn id(field: &'static str, raw: i64) -> Result<i64, Invalid> {
    if raw > 0 {
        Ok(raw)
    } else {
        Err(Invalid::new(field, "must be a positive id"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_ids_and_key_names() {
        assert_eq!(ExternalId::parse("acct-42").unwrap().as_str(), "acct-42");
        assert!(ExternalId::parse(&"x".repeat(256)).is_ok());
        for bad in ["", " a", "a ", "a\nb", "\u{0}"] {
            assert!(ExternalId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(ExternalId::parse(&"x".repeat(257)).is_err());
        assert_eq!(KeyName::parse(" app ").unwrap().as_str(), "app");
        assert!(KeyName::parse(&"k".repeat(64)).is_ok());
        for bad in ["", "  ", "a\tb"] {
            assert!(KeyName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(KeyName::parse(&"k".repeat(65)).is_err());
    }

    #[test]
    fn names() {
        let l = Limits::default();
        assert_eq!(
            Name::parse("nickname", "  Ann ", &l).unwrap().as_str(),
            "Ann"
        );
        assert!(Name::parse("nickname", "   ", &l).is_err());
        assert!(Name::parse("nickname", "a\u{0007}b", &l).is_err());
        assert!(Name::parse("nickname", &"x".repeat(64), &l).is_ok());
        assert!(Name::parse("nickname", &"x".repeat(65), &l).is_err());
        assert!(
            Name::parse("nickname", &"字".repeat(64), &l).is_ok(),
            "characters, not bytes"
        );
    }

    #[test]
    fn avatars() {
        let l = Limits::default();
        assert_eq!(Avatar::parse("", &l).unwrap().as_str(), "");
        assert!(Avatar::parse("https://x.example/a.png", &l).is_ok());
        assert!(Avatar::parse("javascript:alert(1)", &l).is_err());
        assert!(Avatar::parse("https://x/a b", &l).is_err());
        assert!(Avatar::parse(&format!("https://{}", "a".repeat(600)), &l).is_err());
    }

    #[test]
    fn content_and_types() {
        let l = Limits::default();
        assert!(Content::parse("hi\nthere", &l).is_ok());
        assert!(Content::parse(" \n", &l).is_err());
        assert!(Content::parse("a\u{0000}", &l).is_err());
        assert!(Content::parse(&"é".repeat(4000), &l).is_ok());
        assert!(Content::parse(&"é".repeat(4001), &l).is_err());
        assert!(MessageType::parse("image", &l).is_ok());
        assert!(MessageType::parse("Image", &l).is_err());
        assert!(MessageType::parse("", &l).is_err());
    }

    #[test]
    fn labels_may_be_empty() {
        let l = Limits::default();
        assert_eq!(Label::parse("remark_name", "  ", &l).unwrap().as_str(), "");
        assert!(Label::parse("remark_name", &"r".repeat(65), &l).is_err());
    }
}
