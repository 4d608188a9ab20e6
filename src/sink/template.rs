//! Key templates: literal text and the placeholders `{channel}`, `{schema}`, `{table}` and
//! `{type}`, parsed once from the configuration (AMQP routing keys, Redis stream keys). Each sink
//! renders the placeholders its own way (AMQP turns them into dotted words; Redis keeps them).

/// A placeholder of a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Channel,
    Schema,
    Table,
    /// `created`, `updated`, `deleted`, or `*`.
    Type,
}

impl Field {
    pub const ALL: [Field; 4] = [Field::Channel, Field::Schema, Field::Table, Field::Type];

    fn name(self) -> &'static str {
        match self {
            Field::Channel => "channel",
            Field::Schema => "schema",
            Field::Table => "table",
            Field::Type => "type",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    Field(Field),
}

/// Parses `template` into literal text and the placeholders of `allowed`.
pub fn parse(template: &str, allowed: &[Field]) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        if rest.as_bytes()[open] == b'}' {
            return Err(format!("{template:?}: unmatched `}}`"));
        }
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_owned()));
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("{template:?}: unmatched `{{`"))?;
        let name = &after[..close];
        let Some(field) = allowed.iter().find(|f| f.name() == name) else {
            let known: Vec<String> = allowed
                .iter()
                .map(|f| format!("{{{}}}", f.name()))
                .collect();
            return Err(format!(
                "{template:?}: unknown placeholder {{{name}}}; use {}",
                known.join(", ")
            ));
        };
        parts.push(Part::Field(*field));
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    Ok(parts)
}
