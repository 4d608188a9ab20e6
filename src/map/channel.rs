//! Channel templates: a table's channel may take path segments from the row's columns,
//! `tenants/{org_id}/resources/posts`, so that each tenant's clients subscribe to, and are
//! granted, a channel of their own. A placeholder is a whole `/`-separated segment. A value
//! becomes a segment by keeping ASCII letters, digits, `_` and `-`, and writing every other
//! byte as `=XX` (upper-case hex): `a.b@c` → `a=2Eb=40c`. NULL and the empty string become `=`.
//! Rendered segments hold no `/`, `*`, `.`, `+`, `#`, `>` or whitespace, so a value can neither
//! add a segment nor act as a wildcard in any sink, and distinct values give distinct channels.

use std::collections::HashSet;
use std::fmt::Write as _;

/// One segment of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `{column}`: the value of that column.
    Column(String),
}

/// A channel, fixed or with placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    segments: Vec<Segment>,
}

/// What a placeholder renders NULL (and the empty string) as: never produced by encoding a
/// non-empty value, which always gives `=XX` or kept characters.
pub const NO_VALUE: &str = "=";

impl Template {
    /// Parses `text`. A `{` or `}` anywhere but around a whole segment is an error, as is an
    /// empty placeholder or one named twice.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut segments = Vec::new();
        for part in text.split('/') {
            let braces = part.contains(['{', '}']);
            if let Some(column) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                if column.is_empty() || column.contains(['{', '}']) {
                    return Err(format!(
                        "`{part}` is not a placeholder: write {{column}} with a column's name"
                    ));
                }
                if segments.contains(&Segment::Column(column.to_owned())) {
                    return Err(format!("placeholder {{{column}}} appears twice"));
                }
                segments.push(Segment::Column(column.to_owned()));
            } else if braces {
                return Err(format!(
                    "`{part}`: a placeholder must be a whole segment between `/`, like \
                     tenants/{{org_id}}/resources/posts"
                ));
            } else {
                segments.push(Segment::Literal(part.to_owned()));
            }
        }
        Ok(Template {
            text: text.to_owned(),
            segments,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether it has no placeholder: one channel for every row.
    pub fn is_fixed(&self) -> bool {
        self.columns().next().is_none()
    }

    /// The columns its placeholders name, in order.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Column(c) => Some(c.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// The channel for a row, `value(column)` giving each placeholder's value as text (`None`:
    /// NULL). `Err(column)` when a value is not known (not in the tuple).
    pub fn render<'a>(
        &self,
        mut value: impl FnMut(&str) -> Result<Option<&'a [u8]>, ()>,
    ) -> Result<String, String> {
        let mut out = String::with_capacity(self.text.len() + 8);
        for (i, segment) in self.segments.iter().enumerate() {
            if i > 0 {
                out.push('/');
            }
            match segment {
                Segment::Literal(l) => out.push_str(l),
                Segment::Column(c) => match value(c) {
                    Ok(v) => encode(v.unwrap_or_default(), &mut out),
                    Err(()) => return Err(c.clone()),
                },
            }
        }
        Ok(out)
    }

    /// A channel it can render, for checking a sink's limits on channel names (each
    /// placeholder as the longest-looking value's shape: `=00`).
    pub fn sample(&self) -> String {
        self.render(|_| Ok(Some(b"\0"))).unwrap_or_default()
    }

    /// Whether `channel` is one this template renders.
    pub fn matches(&self, channel: &str) -> bool {
        let mut parts = channel.split('/');
        for segment in &self.segments {
            let Some(part) = parts.next() else {
                return false;
            };
            let fits = match segment {
                Segment::Literal(l) => part == l,
                Segment::Column(_) => is_encoded(part),
            };
            if !fits {
                return false;
            }
        }
        parts.next().is_none()
    }
}

/// The channels a relay serves: fixed names, and those templates render.
#[derive(Debug, Default)]
pub struct ChannelSet {
    fixed: HashSet<String>,
    templates: Vec<Template>,
}

impl ChannelSet {
    /// The set of `channels` as configured (a text that is not a valid template is taken
    /// literally; the configuration refused it already).
    pub fn new<'a>(channels: impl IntoIterator<Item = &'a str>) -> ChannelSet {
        let mut set = ChannelSet::default();
        for c in channels {
            match Template::parse(c) {
                Ok(t) if !t.is_fixed() => set.templates.push(t),
                _ => {
                    set.fixed.insert(c.to_owned());
                }
            }
        }
        set
    }

    pub fn contains(&self, channel: &str) -> bool {
        self.fixed.contains(channel) || self.templates.iter().any(|t| t.matches(channel))
    }
}

/// Writes `value` as a channel segment (see the module's documentation).
pub fn encode(value: &[u8], out: &mut String) {
    if value.is_empty() {
        out.push_str(NO_VALUE);
        return;
    }
    for &b in value {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "={b:02X}");
        }
    }
}

/// Whether `segment` is what [`encode`] can produce.
fn is_encoded(segment: &str) -> bool {
    if segment == NO_VALUE {
        return true;
    }
    let b = segment.as_bytes();
    if b.is_empty() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            c if c.is_ascii_alphanumeric() || c == b'_' || c == b'-' => i += 1,
            b'=' if i + 2 < b.len()
                && b[i + 1].is_ascii_hexdigit()
                && b[i + 2].is_ascii_hexdigit() =>
            {
                let hex = &segment[i + 1..i + 3];
                // Upper-case only, and never a byte that would have been kept: one spelling
                // per value.
                let byte = u8::from_str_radix(hex, 16).unwrap_or(b'a');
                if hex != hex.to_ascii_uppercase()
                    || byte.is_ascii_alphanumeric()
                    || byte == b'_'
                    || byte == b'-'
                {
                    return false;
                }
                i += 3;
            }
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(t: &Template, values: &[(&str, Option<&str>)]) -> Result<String, String> {
        t.render(|c| {
            values
                .iter()
                .find(|(name, _)| *name == c)
                .map(|(_, v)| v.map(str::as_bytes))
                .ok_or(())
        })
    }

    #[test]
    fn a_template_renders_each_placeholder_from_its_column() {
        let t = Template::parse("tenants/{org_id}/resources/{kind}").unwrap();
        assert!(!t.is_fixed());
        assert_eq!(t.columns().collect::<Vec<_>>(), ["org_id", "kind"]);
        assert_eq!(
            render(&t, &[("org_id", Some("42")), ("kind", Some("posts"))]).unwrap(),
            "tenants/42/resources/posts"
        );
        // A value cannot add a segment, be a wildcard, or look like another value.
        assert_eq!(
            render(
                &t,
                &[("org_id", Some("4/2.*#+ >")), ("kind", Some("a-b_C"))]
            )
            .unwrap(),
            "tenants/4=2F2=2E=2A=23=2B=20=3E/resources/a-b_C"
        );
        assert_eq!(
            render(&t, &[("org_id", None), ("kind", Some(""))]).unwrap(),
            "tenants/=/resources/="
        );
        assert_eq!(render(&t, &[("org_id", Some("1"))]), Err("kind".to_owned()));
        assert_eq!(t.sample(), "tenants/=00/resources/=00");
        let fixed = Template::parse("resources/posts").unwrap();
        assert!(fixed.is_fixed());
        assert_eq!(render(&fixed, &[]).unwrap(), "resources/posts");
    }

    #[test]
    fn a_template_matches_exactly_what_it_can_render() {
        let t = Template::parse("tenants/{org_id}/resources/posts").unwrap();
        for yes in [
            "tenants/42/resources/posts",
            "tenants/=/resources/posts",
            "tenants/a=2Eb/resources/posts",
        ] {
            assert!(t.matches(yes), "{yes}");
        }
        for no in [
            "tenants/42/resources/comments",
            "tenants//resources/posts",
            "tenants/4/2/resources/posts",
            "tenants/*/resources/posts",
            "tenants/a.b/resources/posts",
            "tenants/a=2eb/resources/posts",
            "tenants/=41/resources/posts",
            "tenants/=4/resources/posts",
            "tenants/42/resources/posts/x",
            "tenants/42/resources",
        ] {
            assert!(!t.matches(no), "{no}");
        }
    }

    #[test]
    fn placeholders_are_whole_segments() {
        for bad in [
            "tenants/org-{id}",
            "tenants/{}",
            "a/{x}/{x}",
            "a/{x}}",
            "a/{x",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }
}
