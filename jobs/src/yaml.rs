//! The one YAML reader and writer of Plume: job files, experiment files and the run configs
//! the coordinator stores all go through here.
//!
//! It wraps `serde-saphyr` (maintained, panic-free, with source spans) under budgets sized to
//! Plume's own file limits, so that hostile input (deep nesting, alias bombs, huge scalars)
//! is rejected by the parser before anything is built from it, in milliseconds.

use serde::de::DeserializeOwned;
use serde_saphyr::{Budget, MessageFormatter};

/// A YAML value as Plume handles it dynamically (experiment configs, overrides): JSON's data
/// model in written order, which is all a job config may use.
pub type Value = serde_json::Value;
/// A YAML mapping with string keys, in written order.
pub type Mapping = serde_json::Map<String, Value>;
/// A 1-based line and column in a YAML source.
pub use serde_saphyr::Location;
/// A value with the place it was written (`.referenced` is where it appears in the file).
pub use serde_saphyr::Spanned;

/// Nesting deeper than this is refused (an experiment needs about 6 levels).
pub const MAX_DEPTH: usize = 32;
/// Most parser nodes in one document: a 256 KiB experiment of one-character list items
/// has about 130,000, so this refuses only inputs no experiment needs.
pub const MAX_NODES: usize = 150_000;
/// Most aliases (`*name`) in one document; they are rarely useful in configs.
pub const MAX_ALIASES: usize = 64;
/// Most parser events replayed for aliases in one document.
pub const MAX_REPLAYED_EVENTS: usize = 10_000;

/// A YAML text that could not be read as the expected shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{column}: {message}")]
pub struct YamlError {
    /// 1-based line (0 when the parser could not place it).
    pub line: usize,
    /// 1-based column (0 when the parser could not place it).
    pub column: usize,
    /// What is wrong, without the position.
    pub message: String,
}

fn options() -> serde_saphyr::Options {
    let mut budget = Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.flow_nesting_limit = MAX_DEPTH;
    budget.max_nodes = MAX_NODES;
    budget.max_events = 2 * MAX_NODES;
    budget.max_aliases = MAX_ALIASES;
    budget.max_anchors = MAX_ALIASES;
    budget.max_documents = 1;
    budget.max_total_scalar_bytes = 4 << 20;
    budget.max_total_comment_bytes = 4 << 20;
    // Replaying aliases is where a small file turns into a large tree: cap it well below
    // the node budget, so an alias bomb stops in milliseconds.
    let mut alias_limits = serde_saphyr::options::AliasLimits::default();
    alias_limits.max_total_replayed_events = MAX_REPLAYED_EVENTS;
    serde_saphyr::options! {
        budget: Some(budget),
        alias_limits: alias_limits,
        with_snippet: false,
    }
}

impl From<serde_saphyr::Error> for YamlError {
    fn from(e: serde_saphyr::Error) -> Self {
        let e = e.without_snippet();
        let (line, column) = e
            .location()
            .map_or((0, 0), |l| (l.line() as usize, l.column() as usize));
        // The formatter gives the message without the position, which is carried apart;
        // control characters from hostile input are escaped, never echoed raw.
        let message = serde_saphyr::DefaultMessageFormatter
            .format_message(e)
            .chars()
            .flat_map(|c| {
                let escaped = c.is_control().then(|| c.escape_default());
                escaped
                    .into_iter()
                    .flatten()
                    .chain((!c.is_control()).then_some(c))
            })
            .collect::<String>();
        let message = if message.starts_with("budget breached")
            || message.contains("recursion limit")
            || message.contains("alias replay limit")
        {
            format!(
                "{message}: larger or deeper than any Plume file needs once its aliases are \
                 expanded (at most {MAX_NODES} nodes, depth {MAX_DEPTH}, {MAX_ALIASES} aliases \
                 replaying {MAX_REPLAYED_EVENTS} events)"
            )
        } else {
            message
        };
        YamlError {
            line,
            column,
            message,
        }
    }
}

/// Reads `text` as a `T`, within the budgets above. A shape error names the field it is
/// about (`network.channels: invalid u32`), since the parser's own message does not.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    serde_saphyr::from_str_with_options(text, options()).map_err(|e| {
        let mut e = YamlError::from(e);
        let mut path = key_path_at(text, e.line, e.column);
        // "unknown field `x`" already names its leaf; the section it is in is what helps.
        if path
            .last()
            .is_some_and(|leaf| e.message.contains(&format!("`{leaf}`")))
        {
            path.pop();
        }
        if !path.is_empty() {
            e.message = format!("{}: {}", path.join("."), e.message);
        }
        e
    })
}

/// A document's keys and items with their places; only read to name an error's field.
enum Tree {
    Map(Vec<(Spanned<String>, Spanned<Tree>)>),
    Seq(Vec<Spanned<Tree>>),
    Leaf,
}

impl<'de> serde::Deserialize<'de> for Tree {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TreeVisitor;
        impl<'de> serde::de::Visitor<'de> for TreeVisitor {
            type Value = Tree;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any YAML node")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Tree, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = m.next_entry()? {
                    entries.push(entry);
                }
                Ok(Tree::Map(entries))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut s: A) -> Result<Tree, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = s.next_element()? {
                    items.push(item);
                }
                Ok(Tree::Seq(items))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Tree, E> {
                Ok(Tree::Leaf)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Tree, E> {
                Ok(Tree::Leaf)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Tree, E> {
                Ok(Tree::Leaf)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Tree, E> {
                Ok(Tree::Leaf)
            }
            fn visit_str<E>(self, _: &str) -> Result<Tree, E> {
                Ok(Tree::Leaf)
            }
            fn visit_unit<E>(self) -> Result<Tree, E> {
                Ok(Tree::Leaf)
            }
        }
        d.deserialize_any(TreeVisitor)
    }
}

/// The keys (and `[i]` items) leading to the node written at `line`:`column`: in each
/// mapping or list, the last entry that starts at or before it. Empty when the text does
/// not parse as YAML or the place is outside every entry.
pub fn key_path_at(text: &str, line: usize, column: usize) -> Vec<String> {
    let mut path = Vec::new();
    if line == 0 {
        return path;
    }
    let Ok(mut node) = serde_saphyr::from_str_with_options::<Tree>(text, options()) else {
        return path;
    };
    let at = (line, column);
    let starts_before = |l: &Location| position(l) <= at;
    loop {
        node = match node {
            Tree::Map(entries) => match entries
                .into_iter()
                .rfind(|(k, _)| starts_before(&k.referenced))
            {
                Some((k, v)) => {
                    path.push(k.value);
                    v.value
                }
                None => break,
            },
            Tree::Seq(items) => {
                match items
                    .into_iter()
                    .enumerate()
                    .rfind(|(_, v)| starts_before(&v.referenced))
                {
                    Some((i, v)) => {
                        path.push(format!("[{i}]"));
                        v.value
                    }
                    None => break,
                }
            }
            Tree::Leaf => break,
        };
    }
    path
}

/// Writes `value` as YAML (block style, keys in their order).
pub fn to_string<T: serde::Serialize>(value: &T) -> Result<String, YamlError> {
    serde_saphyr::to_string(value).map_err(|e| YamlError {
        line: 0,
        column: 0,
        message: e.to_string(),
    })
}

/// 1-based `(line, column)` of a spanned value.
pub fn position(at: &Location) -> (usize, usize) {
    (at.line() as usize, at.column() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn rejected_quickly(text: &str) -> YamlError {
        let t = Instant::now();
        let err = from_str::<Value>(text).expect_err("hostile input must be refused");
        // Generous: the point is milliseconds, not the 50 s serde_yaml took on nesting.
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "took {:?}",
            t.elapsed()
        );
        err
    }

    #[test]
    fn deep_flow_nesting_is_refused_by_the_parser() {
        let err = rejected_quickly(&"[".repeat(200_000));
        assert!(
            err.message.contains("recursion") || err.message.contains("Depth"),
            "{err}"
        );
    }

    #[test]
    fn deep_block_nesting_is_refused() {
        let err = rejected_quickly(&"- ".repeat(100_000));
        assert!(
            err.message.contains("Depth") || err.message.contains("depth"),
            "{err}"
        );
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let p = i - 1;
            text += &format!("a{i}: &a{i} [{}]\n", vec![format!("*a{p}"); 9].join(", "));
        }
        let err = rejected_quickly(&text);
        assert!(err.line > 0, "{err}");
    }

    #[test]
    fn errors_carry_the_parsers_own_position() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Shape {
            name: String,
            steps: u32,
        }
        let err = from_str::<Shape>("name: x\nstepz: 3\n").unwrap_err();
        assert_eq!((err.line, err.column), (2, 1), "{err}");
        assert!(err.message.contains("stepz"), "{err}");
        let err = from_str::<Shape>("name: x\nsteps: lots\n").unwrap_err();
        assert_eq!((err.line, err.column), (2, 8), "{err}");
        assert!(err.message.starts_with("steps: "), "{err}");
        let err = from_str::<Value>("a: .nan\n").unwrap_err();
        assert_eq!(err.line, 1, "{err}");
    }

    #[test]
    fn key_paths_name_the_field_at_a_place() {
        let text = "a: 1\nnet:\n  layers: [4, {width: x}]\n  depth: 2\nz: {q: 1}\n";
        assert_eq!(key_path_at(text, 1, 4), ["a"]);
        assert_eq!(key_path_at(text, 3, 22), ["net", "layers", "[1]", "width"]);
        assert_eq!(key_path_at(text, 4, 10), ["net", "depth"]);
        assert_eq!(key_path_at(text, 5, 8), ["z", "q"]);
        assert!(key_path_at("[unclosed", 1, 2).is_empty());
    }

    #[test]
    fn spans_point_at_values() {
        #[derive(serde::Deserialize)]
        struct Named {
            name: Spanned<String>,
        }
        let n: Named = from_str("# comment\nname:   bird\n").unwrap();
        assert_eq!(n.name.value, "bird");
        assert_eq!(position(&n.name.referenced), (2, 9));
    }

    #[test]
    fn values_round_trip_in_written_order() {
        let text = "kind: train-text\nsteps: 10\nlr: 0.001\nlosses:\n  b: 1.0\n  a: [1, 2]\n";
        let v: Value = from_str(text).unwrap();
        let back = to_string(&v).unwrap();
        let again: Value = from_str(&back).unwrap();
        assert_eq!(v, again);
        assert!(back.starts_with("kind: train-text\n"), "{back}");
    }
}
