//! The mapping file: which tags a changed row invalidates (design §4).
//!
//! ```toml
//! [tables]
//! products = ["product-{id}", "category-{category_id}"]
//!
//! [tables."shop.orders"]
//! tags = ["order-{id}", "customer-{customer_id}"]
//! mode = "soft"           # default "hard"
//! delayed_purge = "2s"    # a second, soft purge this long after the first
//! truncate = ["orders"]   # what TRUNCATE invalidates (no row to render)
//! ```
//!
//! A table name without a schema is in `public`. `{column}` is replaced by
//! the column's text value; `{{` and `}}` stand for braces. A template
//! whose column is NULL yields no tag. On UPDATE both the old and the new
//! row are rendered; on DELETE the old row; on INSERT the new row. Pure:
//! no I/O beyond reading the file in [`Mapping::load`].

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::pgoutput::{Relation, Value};
use crate::invalidation::Mode;
use crate::policy::tags::MAX_TAG_LEN;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    tables: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFull {
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    mode: Option<Mode>,
    #[serde(default)]
    delayed_purge: Option<String>,
    #[serde(default)]
    truncate: Vec<String>,
}

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Column(String),
}

/// A tag template such as `product-{id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    source: String,
    pieces: Vec<Piece>,
}

impl Template {
    fn parse(source: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(format!("template {source:?}: `{{` without a closing `}}`")),
                        }
                    }
                    if name.is_empty() {
                        return Err(format!("template {source:?}: `{{}}` names no column"));
                    }
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(Piece::Column(name));
                }
                '}' => return Err(format!("template {source:?}: `}}` without an opening `{{` (write `}}}}`)")),
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        if pieces.is_empty() {
            return Err("empty tag template".into());
        }
        Ok(Template { source: source.to_string(), pieces })
    }

    /// The columns the template reads.
    pub(crate) fn columns(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Column(c) => Some(c.as_str()),
            Piece::Text(_) => None,
        })
    }

    pub(crate) fn source(&self) -> &str {
        &self.source
    }
}

/// What one table's changes invalidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableMapping {
    pub(crate) schema: String,
    pub(crate) name: String,
    pub(crate) templates: Vec<Template>,
    pub(crate) mode: Mode,
    /// A second, soft purge this long after the first (design §4: origins
    /// that read from a lagging replica).
    pub(crate) delayed_purge: Option<Duration>,
    pub(crate) truncate: Vec<String>,
}

impl TableMapping {
    /// `"schema"."name"`, quoted for SQL.
    pub(crate) fn sql_name(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    pub(crate) fn display_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// Every column any template reads, once each.
    pub(crate) fn columns(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for c in self.templates.iter().flat_map(Template::columns) {
            if !out.contains(&c) {
                out.push(c);
            }
        }
        out
    }
}

/// An SQL identifier, quoted.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// An SQL string literal.
pub(crate) fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The whole mapping, keyed by (schema, table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mapping {
    pub(crate) tables: Vec<TableMapping>,
}

impl Mapping {
    pub(crate) fn load(path: &Path) -> Result<Mapping, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read the mapping {}: {e}", path.display()))?;
        Mapping::parse(&text).map_err(|e| format!("mapping {}: {e}", path.display()))
    }

    pub(crate) fn parse(text: &str) -> Result<Mapping, String> {
        let raw: RawMapping = toml::from_str(text).map_err(|e| e.to_string())?;
        if raw.tables.is_empty() {
            return Err("[tables] maps no table".into());
        }
        let mut tables = Vec::new();
        for (key, table) in raw.tables {
            let (schema, name) = match key.split_once('.') {
                Some((s, n)) if !s.is_empty() && !n.is_empty() => (s.to_string(), n.to_string()),
                Some(_) => return Err(format!("table {key:?}: write `schema.table` or `table`")),
                None => ("public".to_string(), key.clone()),
            };
            // The simple form is a list of templates, the rich one a table.
            let full = if table.is_array() {
                let tags = Vec::<String>::deserialize(table).map_err(|e| format!("table {key:?}: {e}"))?;
                RawFull { tags, mode: None, delayed_purge: None, truncate: Vec::new() }
            } else {
                RawFull::deserialize(table).map_err(|e| format!("table {key:?}: {e}"))?
            };
            if full.tags.is_empty() && full.truncate.is_empty() {
                return Err(format!("table {key:?} maps to no tag"));
            }
            let templates = full
                .tags
                .iter()
                .map(|t| Template::parse(t))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("table {key:?}: {e}"))?;
            let delayed_purge = match full.delayed_purge {
                None => None,
                Some(text) => match crate::config::parse_duration(&text) {
                    Some(d) if !d.is_zero() && d <= Duration::from_secs(3600) => Some(d),
                    _ => {
                        return Err(format!(
                            "table {key:?}: delayed_purge {text:?} is not a duration from 1ms to 1h such as \"2s\" or \"500ms\""
                        ));
                    }
                },
            };
            for t in &full.truncate {
                if !valid_tag(t) {
                    return Err(format!("table {key:?}: truncate tag {t:?} is empty, too long or not visible text"));
                }
            }
            tables.push(TableMapping {
                schema,
                name,
                templates,
                mode: full.mode.unwrap_or(Mode::Hard),
                delayed_purge,
                truncate: full.truncate,
            });
        }
        Ok(Mapping { tables })
    }

    pub(crate) fn find(&self, schema: &str, name: &str) -> Option<usize> {
        self.tables.iter().position(|t| t.schema == schema && t.name == name)
    }
}

/// Could this tag match a stored object's tag? (The admin API refuses
/// control characters and tags over MAX_TAG_LEN.)
pub(crate) fn valid_tag(tag: &str) -> bool {
    !tag.trim().is_empty() && tag.len() <= MAX_TAG_LEN && !tag.chars().any(char::is_control)
}

/// A table's templates bound to the column positions of one Relation
/// message (columns may be added or dropped while the relay runs).
#[derive(Debug, Clone)]
pub(crate) struct Bound {
    pub(crate) table: usize,
    /// Per template: its pieces with column positions, or the column it
    /// names that the relation lacks.
    templates: Vec<Result<Vec<BoundPiece>, String>>,
}

#[derive(Debug, Clone)]
enum BoundPiece {
    Text(String),
    Column(usize),
}

/// Why a tag could not be rendered from a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unrendered {
    /// The relation no longer has the column (dropped or renamed).
    MissingColumn(String),
    /// An unchanged TOASTed value with no old value to take it from.
    Unchanged(String),
    /// The rendered tag is empty, too long or has control characters.
    Invalid(String),
}

impl Bound {
    pub(crate) fn new(mapping: &Mapping, table: usize, relation: &Relation) -> Bound {
        let index: HashMap<&str, usize> = relation.columns.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
        let templates = mapping.tables[table]
            .templates
            .iter()
            .map(|t| {
                t.pieces
                    .iter()
                    .map(|p| match p {
                        Piece::Text(s) => Ok(BoundPiece::Text(s.clone())),
                        Piece::Column(c) => index
                            .get(c.as_str())
                            .map(|&i| BoundPiece::Column(i))
                            .ok_or_else(|| format!("template {:?}: {} has no column {c:?}", t.source, relation.name)),
                    })
                    .collect()
            })
            .collect();
        Bound { table, templates }
    }

    /// The tags of one row image. `fallback` supplies values the row marks
    /// unchanged (the old row, for an UPDATE's new row).
    pub(crate) fn render(
        &self,
        row: &[Value],
        fallback: Option<&[Value]>,
        out: &mut Vec<String>,
        problems: &mut Vec<Unrendered>,
    ) {
        'templates: for t in &self.templates {
            let pieces = match t {
                Ok(p) => p,
                Err(e) => {
                    problems.push(Unrendered::MissingColumn(e.clone()));
                    continue;
                }
            };
            let mut tag = String::new();
            for p in pieces {
                match p {
                    BoundPiece::Text(s) => tag.push_str(s),
                    BoundPiece::Column(i) => {
                        match (row.get(*i), fallback.and_then(|f| f.get(*i))) {
                            (Some(Value::Text(v)), _) | (Some(Value::Unchanged), Some(Value::Text(v))) => {
                                tag.push_str(v)
                            }
                            (Some(Value::Unchanged), _) => {
                                problems.push(Unrendered::Unchanged(tag));
                                continue 'templates;
                            }
                            // NULL, or a column the old key-only image does not carry.
                            (Some(Value::Null) | None, _) => continue 'templates,
                        }
                    }
                }
            }
            if valid_tag(&tag) {
                out.push(tag);
            } else {
                problems.push(Unrendered::Invalid(tag));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relation(columns: &[&str]) -> Relation {
        Relation {
            id: 1,
            schema: "public".into(),
            name: "products".into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
        }
    }

    fn text(v: &str) -> Value {
        Value::Text(v.into())
    }

    #[test]
    fn simple_and_rich_forms_parse() {
        let m = Mapping::parse(
            r#"
            [tables]
            products = ["product-{id}", "category-{category_id}"]
            [tables."shop.orders"]
            tags = ["order-{id}"]
            mode = "soft"
            delayed_purge = "2s"
            truncate = ["orders"]
            "#,
        )
        .unwrap();
        let orders = &m.tables[m.find("shop", "orders").unwrap()];
        assert_eq!((orders.mode, orders.delayed_purge), (Mode::Soft, Some(Duration::from_secs(2))));
        assert_eq!(orders.truncate, vec!["orders"]);
        let products = &m.tables[m.find("public", "products").unwrap()];
        assert_eq!((products.mode, products.columns()), (Mode::Hard, vec!["id", "category_id"]));
    }

    #[test]
    fn mistakes_in_the_file_are_named() {
        let err = |t: &str| Mapping::parse(t).unwrap_err();
        assert!(err("[tables]\nproducts = [\"p-{id\"]").contains("without a closing"));
        assert!(err("[tables]\nproducts = [\"p-}\"]").contains("without an opening"));
        assert!(err("[tables]\nproducts = []").contains("maps to no tag"));
        assert!(err("[tables.p]\ntags = [\"x\"]\ndelayed_purge = \"soon\"").contains("delayed_purge"));
        assert!(err("[tables.p]\ntags = [\"x\"]\nmdoe = \"soft\"").contains("mdoe"));
        assert!(err("[tables]\np = \"x-{id}\"").contains("table \"p\""));
        assert!(err("[tables]").contains("no table"));
    }

    #[test]
    fn rendering_uses_values_skips_null_and_takes_unchanged_values_from_the_old_row() {
        let m = Mapping::parse("[tables]\nproducts = [\"product-{id}\", \"cat-{category_id}\", \"{{x}}\"]").unwrap();
        let bound = Bound::new(&m, 0, &relation(&["id", "category_id"]));
        let (mut tags, mut problems) = (Vec::new(), Vec::new());
        bound.render(&[text("42"), Value::Null], None, &mut tags, &mut problems);
        assert_eq!(tags, vec!["product-42", "{x}"]);
        tags.clear();
        bound.render(&[text("42"), Value::Unchanged], Some(&[text("42"), text("7")]), &mut tags, &mut problems);
        assert_eq!(tags, vec!["product-42", "cat-7", "{x}"]);
        assert!(problems.is_empty());
        tags.clear();
        bound.render(&[text("42"), Value::Unchanged], None, &mut tags, &mut problems);
        assert_eq!(problems, vec![Unrendered::Unchanged("cat-".into())]);
    }

    #[test]
    fn a_dropped_column_or_an_unusable_value_is_reported_not_rendered() {
        let m = Mapping::parse("[tables]\nproducts = [\"product-{id}\", \"cat-{category_id}\"]").unwrap();
        let bound = Bound::new(&m, 0, &relation(&["id"]));
        let (mut tags, mut problems) = (Vec::new(), Vec::new());
        bound.render(&[text("a\u{7}b")], None, &mut tags, &mut problems);
        assert!(tags.is_empty());
        assert_eq!(problems[0], Unrendered::Invalid("product-a\u{7}b".into()));
        assert!(matches!(&problems[1], Unrendered::MissingColumn(m) if m.contains("category_id")));
    }
}
