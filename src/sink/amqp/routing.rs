//! Routing keys: a template such as `"{channel}"` or `"cdc.{schema}.{table}.{type}"`, parsed
//! once from the configuration and rendered per event.

use crate::event::EventKind;
use crate::sink::template::{self, Field, Part};

/// Longest routing key AMQP allows (a short string).
pub const MAX_ROUTING_KEY_BYTES: usize = 255;

/// The default template: the channel with `/` turned into `.` (`resources/products` →
/// `resources.products`), so that topic bindings such as `resources.*` work.
pub const DEFAULT_TEMPLATE: &str = "{channel}";

/// A parsed routing-key template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingKey {
    parts: Vec<Part>,
}

impl RoutingKey {
    /// Parses a template of literal text and the placeholders `{channel}`, `{schema}`,
    /// `{table}` and `{type}`.
    pub fn parse(template: &str) -> Result<RoutingKey, String> {
        Ok(RoutingKey {
            parts: template::parse(template, &Field::ALL)?,
        })
    }

    /// The routing key for an event of `kind` from `schema.table` on `channel`, into `out`.
    pub fn render(
        &self,
        out: &mut String,
        channel: &str,
        schema: &str,
        table: &str,
        kind: EventKind,
    ) {
        out.clear();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                // The channel with `/` turned into `.`; a dot in the schema or the table
                // would add a word to the key, so it becomes `_`.
                Part::Field(Field::Channel) => {
                    out.extend(channel.chars().map(|c| if c == '/' { '.' } else { c }))
                }
                Part::Field(Field::Schema) => push_word(out, schema),
                Part::Field(Field::Table) => push_word(out, table),
                Part::Field(Field::Type) => out.push_str(kind.as_str()),
            }
        }
    }

    /// Checks that every key this template can produce for `channel` and `schema.table` fits.
    pub fn check(&self, channel: &str, schema: &str, table: &str) -> Result<(), String> {
        let mut key = String::new();
        for kind in EventKind::ALL {
            self.render(&mut key, channel, schema, table, kind);
            if key.len() > MAX_ROUTING_KEY_BYTES {
                return Err(format!(
                    "the routing key for {schema}.{table} would be {} bytes; AMQP allows at most {MAX_ROUTING_KEY_BYTES}",
                    key.len()
                ));
            }
        }
        Ok(())
    }
}

fn push_word(out: &mut String, word: &str) {
    out.extend(word.chars().map(|c| if c == '.' { '_' } else { c }));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(template: &str, channel: &str, table: &str, kind: EventKind) -> String {
        let mut out = String::new();
        RoutingKey::parse(template)
            .unwrap()
            .render(&mut out, channel, "public", table, kind);
        out
    }

    #[test]
    fn the_default_maps_the_channel_to_dotted_words() {
        assert_eq!(
            render(
                DEFAULT_TEMPLATE,
                "resources/products",
                "products",
                EventKind::Created
            ),
            "resources.products"
        );
    }

    #[test]
    fn placeholders_and_text_combine() {
        assert_eq!(
            render(
                "cdc.{schema}.{table}.{type}",
                "x",
                "order.items",
                EventKind::Deleted
            ),
            "cdc.public.order_items.deleted"
        );
        assert_eq!(render("fixed", "x", "t", EventKind::Updated), "fixed");
        // In a routing key `*` is an ordinary character (a wildcard only in bindings), so
        // `cdc.#` and `cdc.*.*.*` bindings receive the refetch event too.
        assert_eq!(
            render("cdc.{schema}.{table}.{type}", "x", "t", EventKind::Refetch),
            "cdc.public.t.*"
        );
    }

    #[test]
    fn bad_templates_say_what_is_wrong() {
        assert!(
            RoutingKey::parse("{chanel}")
                .unwrap_err()
                .contains("unknown placeholder {chanel}")
        );
        assert!(
            RoutingKey::parse("{channel")
                .unwrap_err()
                .contains("unmatched `{`")
        );
        assert!(
            RoutingKey::parse("a}")
                .unwrap_err()
                .contains("unmatched `}`")
        );
    }

    #[test]
    fn keys_longer_than_amqp_allows_are_refused() {
        let key = RoutingKey::parse("{channel}.{type}").unwrap();
        assert!(key.check(&"c".repeat(240), "public", "t").is_ok());
        let err = key.check(&"c".repeat(250), "public", "t").unwrap_err();
        assert!(
            err.contains("public.t") && err.contains("258 bytes"),
            "{err}"
        );
    }
}
