//! Batch enrolment: a TOML file of sites, enrolled in one signed change.
//!
//! The file is a list of `[[site]]` tables:
//!
//! ```toml
//! [[site]]
//! id = "5c1f…"          # the node id (64 hex digits, `dcloud id`)
//! name = "paris-1"
//! region = "eu-west"
//! labels = { tier = "edge" }   # optional, string -> string
//! ```
//!
//! Every row is checked before anything is signed: a bad id, a missing or
//! unknown field, an id or name given twice, a name, region or label the
//! policy refuses, or a site that is already enrolled or was revoked is named
//! by its line in the file, and nothing is written.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use dcloud_crdt::{Edit, Member, NodeId, Policy, PolicyEditor};
use serde::Deserialize;
use toml::Spanned;

/// Why a sites file was refused.
#[derive(Debug, thiserror::Error)]
pub enum SitesError {
    /// The file is not TOML of the expected shape.
    #[error("{file} line {line}: {reason}")]
    Parse {
        /// The file, as given.
        file: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A row is refused.
    #[error("{file} line {line}: {reason}")]
    Row {
        /// The file, as given.
        file: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The file holds no site.
    #[error("{0} holds no [[site]] table")]
    Empty(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SitesFile {
    #[serde(default)]
    site: Vec<Spanned<Row>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Row {
    id: Spanned<String>,
    name: Spanned<String>,
    region: Spanned<String>,
    #[serde(default)]
    labels: Option<Spanned<BTreeMap<String, String>>>,
}

/// One site of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteRow {
    /// The line of its `id`.
    pub line: usize,
    /// The node id.
    pub id: NodeId,
    /// Name, region and labels.
    pub member: Member,
}

/// The 1-based line holding byte `offset` of `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn line_of_span(text: &str, span: &Range<usize>) -> usize {
    // A span may start at the whitespace before the value; count from its
    // first non-blank byte, so that the line is the one the value is on.
    let bytes = text.as_bytes();
    let mut start = span.start.min(bytes.len());
    while start < span.end.min(bytes.len()) && bytes[start].is_ascii_whitespace() {
        start += 1;
    }
    line_of(text, start)
}

/// Parse and check a sites file (`file` names it in errors): the shape of
/// every row, its id, and duplicates within the file. Checks against the
/// policy are [`enrol_edits`]'.
pub fn parse(file: &str, text: &str) -> Result<Vec<SiteRow>, SitesError> {
    let parsed: SitesFile = toml::from_str(text).map_err(|e| SitesError::Parse {
        file: file.to_string(),
        line: e.span().map_or(1, |s| line_of_span(text, &s)),
        reason: e.message().trim().to_string(),
    })?;
    if parsed.site.is_empty() {
        return Err(SitesError::Empty(file.to_string()));
    }
    let row_err = |span: &Range<usize>, reason: String| SitesError::Row {
        file: file.to_string(),
        line: line_of_span(text, span),
        reason,
    };
    // The policy's own checks of a name, region and labels (an empty base:
    // whether the site is enrolled or revoked is checked against the real one).
    let mut shape = PolicyEditor::new(&[]).map_err(|e| SitesError::Parse {
        file: file.to_string(),
        line: 1,
        reason: e.to_string(),
    })?;
    let mut ids: HashMap<NodeId, usize> = HashMap::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut rows = Vec::new();
    for row in parsed.site {
        let row = row.into_inner();
        let id_span = row.id.span();
        let id: NodeId = row.id.get_ref().parse().map_err(|_| {
            row_err(
                &id_span,
                format!("node id {:?} is not 64 hex digits", row.id.get_ref()),
            )
        })?;
        let line = line_of_span(text, &id_span);
        if let Some(first) = ids.insert(id, line) {
            return Err(row_err(
                &id_span,
                format!(
                    "node {} is listed twice (first on line {first})",
                    id.short()
                ),
            ));
        }
        let name_span = row.name.span();
        let name = row.name.into_inner();
        if let Some(first) = names.insert(name.clone(), line_of_span(text, &name_span)) {
            return Err(row_err(
                &name_span,
                format!("name {name:?} is given twice (first on line {first})"),
            ));
        }
        let region_span = row.region.span();
        let (labels_span, labels) = match row.labels {
            Some(l) => (l.span(), l.into_inner()),
            None => (id_span.clone(), BTreeMap::new()),
        };
        let member = Member {
            name,
            region: row.region.into_inner(),
            labels,
        };
        if let Err(e) = shape.push(Edit::Enrol(id, member.clone())) {
            let span = match &e {
                dcloud_crdt::policy::EditError::InvalidName { what: "region", .. } => region_span,
                dcloud_crdt::policy::EditError::InvalidName { what: "name", .. } => name_span,
                dcloud_crdt::policy::EditError::InvalidName { what: "label", .. } => labels_span,
                _ => id_span,
            };
            return Err(row_err(&span, e.to_string()));
        }
        rows.push(SiteRow { line, id, member });
    }
    Ok(rows)
}

/// The enrolments of `rows` against `policy`: a site already enrolled or
/// revoked, or a name an enrolled site already has, is refused by its line.
pub fn enrol_edits(file: &str, rows: &[SiteRow], policy: &Policy) -> Result<Vec<Edit>, SitesError> {
    let err = |line: usize, reason: String| SitesError::Row {
        file: file.to_string(),
        line,
        reason,
    };
    let taken: HashMap<&str, &NodeId> = policy
        .members
        .iter()
        .map(|(id, m)| (m.name.as_str(), id))
        .collect();
    let mut edits = Vec::with_capacity(rows.len());
    for r in rows {
        if policy.revoked.contains_key(&r.id) {
            return Err(err(
                r.line,
                format!(
                    "node {} was revoked; a revoked key cannot be enrolled again (give the site a new key)",
                    r.id.short()
                ),
            ));
        }
        if let Some(m) = policy.members.get(&r.id) {
            return Err(err(
                r.line,
                format!(
                    "node {} is already enrolled (as {:?} in {}); use the single-site `enrol` to change it",
                    r.id.short(),
                    m.name,
                    m.region
                ),
            ));
        }
        if let Some(other) = taken.get(r.member.name.as_str()) {
            return Err(err(
                r.line,
                format!(
                    "name {:?} is already the name of enrolled node {}",
                    r.member.name,
                    other.short()
                ),
            ));
        }
        edits.push(Edit::Enrol(r.id, r.member.clone()));
    }
    Ok(edits)
}

#[cfg(test)]
mod tests {
    use dcloud_crdt::SecretKey;

    use super::*;

    fn id(i: u8) -> String {
        SecretKey::from_seed([i; 32]).public().to_string()
    }

    fn line_of_error(text: &str) -> (usize, String) {
        match parse("sites.toml", text) {
            Err(SitesError::Row { line, reason, .. } | SitesError::Parse { line, reason, .. }) => {
                (line, reason)
            }
            other => panic!("expected a row error, got {other:?}"),
        }
    }

    #[test]
    fn rows_parse_with_their_lines() {
        let text = format!(
            "# sites\n\n[[site]]\nid = \"{}\"\nname = \"a\"\nregion = \"eu\"\nlabels = {{ tier = \"edge\" }}\n\n[[site]]\nname = \"b\"\nid = \"{}\"\nregion = \"us\"\n",
            id(1),
            id(2)
        );
        let rows = parse("sites.toml", &text).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].line, 4);
        assert_eq!(rows[0].member.labels["tier"], "edge");
        assert_eq!(rows[1].line, 11);
        assert_eq!(rows[1].member.region, "us");
    }

    #[test]
    fn bad_rows_are_named_by_line() {
        let good = |i: u8, name: &str| {
            format!(
                "[[site]]\nid = \"{}\"\nname = \"{name}\"\nregion = \"eu\"\n",
                id(i)
            )
        };
        // Bad id on line 6.
        let text = format!(
            "{}[[site]]\nid = \"nope\"\nname = \"b\"\nregion = \"eu\"\n",
            good(1, "a")
        );
        let (line, why) = line_of_error(&text);
        assert_eq!(line, 6, "{why}");
        assert!(why.contains("not 64 hex digits"), "{why}");
        // Duplicate id, name.
        let (line, why) = line_of_error(&format!("{}{}", good(1, "a"), good(1, "b")));
        assert_eq!((line, why.contains("listed twice")), (6, true), "{why}");
        let (line, why) = line_of_error(&format!("{}{}", good(1, "a"), good(2, "a")));
        assert_eq!((line, why.contains("given twice")), (7, true), "{why}");
        // Invalid region (policy check), on its own line.
        let (line, why) = line_of_error(&format!(
            "{}[[site]]\nid = \"{}\"\nname = \"b\"\nregion = \"e u\"\n",
            good(1, "a"),
            id(2)
        ));
        assert_eq!(line, 8, "{why}");
        assert!(why.contains("invalid region"), "{why}");
        // Missing field, unknown field.
        let (line, why) = line_of_error(&format!(
            "{}[[site]]\nid = \"{}\"\nname = \"b\"\n",
            good(1, "a"),
            id(2)
        ));
        assert!(why.contains("region"), "{why}");
        assert!((5..=7).contains(&line), "line {line}: {why}");
        let (line, why) = line_of_error(&format!("{}colour = \"red\"\n", good(1, "a")));
        assert_eq!(line, 5, "{why}");
        assert!(why.contains("colour"), "{why}");
        assert!(matches!(
            parse("f", "# nothing\n"),
            Err(SitesError::Empty(_))
        ));
    }

    #[test]
    fn enrolled_revoked_and_taken_names_are_refused() {
        let rows = parse(
            "f",
            &format!(
                "[[site]]\nid = \"{}\"\nname = \"a\"\nregion = \"eu\"\n",
                id(1)
            ),
        )
        .unwrap();
        let node: NodeId = id(1).parse().unwrap();
        let other: NodeId = id(2).parse().unwrap();
        let member = |name: &str| Member {
            name: name.into(),
            region: "eu".into(),
            labels: BTreeMap::new(),
        };
        let mut p = Policy::default();
        assert_eq!(enrol_edits("f", &rows, &p).unwrap().len(), 1);
        p.members.insert(other, member("a"));
        let e = enrol_edits("f", &rows, &p).unwrap_err().to_string();
        assert!(
            e.contains("f line 2") && e.contains("already the name"),
            "{e}"
        );
        p.members.clear();
        p.members.insert(node, member("z"));
        let e = enrol_edits("f", &rows, &p).unwrap_err().to_string();
        assert!(e.contains("already enrolled"), "{e}");
        p.members.clear();
        p.revoked.insert(node, "gone".into());
        let e = enrol_edits("f", &rows, &p).unwrap_err().to_string();
        assert!(e.contains("revoked"), "{e}");
    }
}
