//! Which columns (and nested fields) of a schema a plan reads, so that
//! sources decode only those (projection pushdown).

use std::collections::BTreeSet;

use arrow::datatypes::{DataType, Field, Fields, Schema};

/// A column path: a top-level column, then nested struct field names.
pub type ColumnPath = Vec<String>;

/// Last element of a path that reads only whether a struct is present
/// (`Bid IS NOT NULL`): pruning keeps one of its fields.
pub const PRESENCE: &str = "";

/// The columns of a schema that are read: all of them, or a set of paths
/// (`[Bid]` reads the whole struct column, `[Bid, price]` one field of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsedColumns {
    /// Every column.
    All,
    /// Only these paths.
    Paths(BTreeSet<ColumnPath>),
}

impl Default for UsedColumns {
    fn default() -> Self {
        UsedColumns::Paths(BTreeSet::new())
    }
}

impl UsedColumns {
    /// No column.
    pub fn none() -> Self {
        Self::default()
    }

    /// Adds one path.
    pub fn add(&mut self, path: ColumnPath) {
        if let UsedColumns::Paths(p) = self {
            p.insert(path);
        }
    }

    /// Adds everything `other` reads.
    pub fn extend(&mut self, other: &UsedColumns) {
        match (self as &mut Self, other) {
            (UsedColumns::All, _) => {}
            (s, UsedColumns::All) => *s = UsedColumns::All,
            (UsedColumns::Paths(a), UsedColumns::Paths(b)) => a.extend(b.iter().cloned()),
        }
    }

    /// Whether anything of top-level column `name` is read.
    pub fn touches(&self, name: &str) -> bool {
        match self {
            UsedColumns::All => true,
            UsedColumns::Paths(p) => p.iter().any(|path| path[0] == name),
        }
    }

    /// The paths read under top-level column `name`, re-rooted at `to`
    /// (a column passed on under another name).
    pub fn renamed(&self, name: &str, to: &str) -> UsedColumns {
        match self {
            UsedColumns::All => {
                let mut u = UsedColumns::none();
                u.add(vec![to.to_string()]);
                u
            }
            UsedColumns::Paths(p) => UsedColumns::Paths(
                p.iter()
                    .filter(|path| path[0] == name)
                    .map(|path| {
                        let mut moved = path.clone();
                        moved[0] = to.to_string();
                        moved
                    })
                    .collect(),
            ),
        }
    }

    /// `schema` without the columns and struct fields that are not read
    /// (`None` when everything is read).
    pub fn prune(&self, schema: &Schema) -> Option<Schema> {
        let UsedColumns::Paths(paths) = self else {
            return None;
        };
        let fields = prune_fields(schema.fields(), paths, 0, &[]);
        let pruned = Schema::new_with_metadata(fields, schema.metadata().clone());
        (pruned != *schema).then_some(pruned)
    }
}

fn prune_fields(
    fields: &Fields,
    paths: &BTreeSet<ColumnPath>,
    depth: usize,
    prefix: &[String],
) -> Vec<Field> {
    let under = |name: &str| -> Vec<&ColumnPath> {
        paths
            .iter()
            .filter(|p| p.len() > depth && p[..depth] == *prefix && p[depth] == name)
            .collect()
    };
    fields
        .iter()
        .filter_map(|f| {
            let hits = under(f.name());
            if hits.is_empty() {
                return None;
            }
            let whole = hits.iter().any(|p| p.len() == depth + 1);
            match f.data_type() {
                DataType::Struct(children) if !whole => {
                    let mut inner = prefix.to_vec();
                    inner.push(f.name().clone());
                    let mut kept = prune_fields(children, paths, depth + 1, &inner);
                    if kept.is_empty()
                        && let Some(first) = children.first()
                    {
                        // Only its presence is read: keep its first field.
                        kept.push(first.as_ref().clone());
                    }
                    Some(
                        f.as_ref()
                            .clone()
                            .with_data_type(DataType::Struct(Fields::from(kept))),
                    )
                }
                _ => Some(f.as_ref().clone()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// `Bid {auction, url}`, `Person {auction, url}` (same fields), `t`, `u`.
    fn schema() -> Schema {
        let fields = Fields::from(vec![
            Field::new("auction", DataType::Int64, true),
            Field::new("url", DataType::Utf8, true),
        ]);
        Schema::new(vec![
            Field::new("Bid", DataType::Struct(fields.clone()), true),
            Field::new("Person", DataType::Struct(fields), true),
            Field::new("t", DataType::Int64, true),
            Field::new("u", DataType::Int64, true),
        ])
    }

    fn only_auction() -> DataType {
        DataType::Struct(Fields::from(vec![Field::new(
            "auction",
            DataType::Int64,
            true,
        )]))
    }

    #[test]
    fn prunes_columns_and_struct_fields() {
        let schema = schema();
        let mut used = UsedColumns::none();
        used.add(vec!["Bid".into(), "auction".into()]);
        used.add(vec!["t".into()]);
        let pruned = used.prune(&schema).expect("narrower");
        assert_eq!(pruned.fields().len(), 2);
        assert_eq!(pruned.field(0).data_type(), &only_auction());
        used.add(vec!["Bid".into()]);
        let pruned = used.prune(&schema).expect("narrower");
        assert_eq!(pruned.field(0), schema.field(0));
        assert_eq!(UsedColumns::All.prune(&schema), None);
        // Presence of a struct keeps one field of it.
        let mut used = UsedColumns::none();
        used.add(vec!["Person".into(), PRESENCE.into()]);
        let pruned = used.prune(&schema).expect("narrower");
        assert_eq!(pruned.field(0).data_type(), &only_auction());
    }

    #[test]
    fn an_expression_reads_the_fields_it_names() {
        let schema = Arc::new(schema());
        let e = crate::compile("COALESCE(Bid.auction, t) * 2 + length(Bid.url)", &schema)
            .expect("compiles");
        assert!(!e.columns().touches("u") && !e.columns().touches("Person"));
        // Everything of Bid and t is read, nothing of Person and u.
        let pruned = e.columns().prune(&schema).expect("narrower");
        let names: Vec<&str> = pruned.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["Bid", "t"]);
        assert_eq!(pruned.field(0), schema.field(0));
    }
}
