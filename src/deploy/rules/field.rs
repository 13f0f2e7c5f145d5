//! Field paths of rule conditions: where in the node or its inventory a value lives.
//!
//! Accepted spellings:
//! - `memory_mb` (a bare name): the node's property of that name;
//! - `properties.x`, `node.x`: the node's properties or the node record;
//! - `inventory.memory.physical_mb`, `inventory.disks[*].size`, `inventory.disks[0].name`;
//! - Ironic inspector's `data://inventory...` and `node://properties...` forms.

use serde_json::Value;

/// Where a path starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    /// The node's properties (bare names).
    Properties,
    /// The whole node record.
    Node,
    /// The introspection data: `{"inventory": ...}`.
    Data,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
    /// `[*]`: every element of a list.
    Each,
}

/// A parsed field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    pub text: String,
    root: Root,
    steps: Vec<Step>,
}

impl FieldPath {
    pub fn parse(text: &str) -> Result<FieldPath, String> {
        let trimmed = text.trim();
        let (root, rest) = if let Some(rest) = trimmed.strip_prefix("data://") {
            (Root::Data, rest)
        } else if let Some(rest) = trimmed.strip_prefix("node://") {
            (Root::Node, rest)
        } else if trimmed.starts_with("inventory.") || trimmed.starts_with("inventory[") {
            (Root::Data, trimmed)
        } else if let Some(rest) = trimmed.strip_prefix("node.") {
            (Root::Node, rest)
        } else if trimmed.starts_with("properties.") {
            (Root::Node, trimmed)
        } else {
            (Root::Properties, trimmed)
        };
        if rest.is_empty() {
            return Err(format!("\"{text}\" names no field"));
        }
        let mut steps = Vec::new();
        for segment in rest.split('.') {
            let (key, mut brackets) = match segment.find('[') {
                Some(at) => (&segment[..at], &segment[at..]),
                None => (segment, ""),
            };
            if key.is_empty() {
                return Err(format!("\"{text}\" has an empty name before '.' or '['"));
            }
            steps.push(Step::Key(key.to_string()));
            while !brackets.is_empty() {
                let close = brackets
                    .find(']')
                    .filter(|_| brackets.starts_with('['))
                    .ok_or_else(|| format!("\"{text}\" has an unclosed or stray '['"))?;
                let inside = &brackets[1..close];
                steps.push(if inside == "*" {
                    Step::Each
                } else {
                    Step::Index(inside.parse().map_err(|_| {
                        format!("\"{text}\": [{inside}] is neither an index nor [*]")
                    })?)
                });
                brackets = &brackets[close + 1..];
            }
        }
        Ok(FieldPath {
            text: text.to_string(),
            root,
            steps,
        })
    }

    pub fn root(&self) -> Root {
        self.root
    }

    /// True if the path can yield several values (it has a `[*]`).
    pub fn is_multiple(&self) -> bool {
        self.steps.contains(&Step::Each)
    }

    /// Every value the path reaches under `root`; empty when the field is missing.
    pub fn resolve<'a>(&self, root: &'a Value) -> Vec<&'a Value> {
        let mut current = vec![root];
        for step in &self.steps {
            let mut next = Vec::new();
            for value in current {
                match step {
                    Step::Key(key) => next.extend(value.get(key.as_str())),
                    Step::Index(index) => next.extend(value.get(*index)),
                    Step::Each => {
                        if let Value::Array(items) = value {
                            next.extend(items.iter());
                        }
                    }
                }
            }
            current = next;
        }
        current.retain(|value| !value.is_null());
        current
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_resolve_keys_indexes_and_wildcards() {
        let data =
            json!({"inventory": {"disks": [{"size": 10}, {"size": 20}], "cpu": {"count": 4}}});
        let sizes = FieldPath::parse("inventory.disks[*].size").unwrap();
        assert!(sizes.is_multiple());
        assert_eq!(sizes.resolve(&data), [&json!(10), &json!(20)]);
        let second = FieldPath::parse("data://inventory.disks[1].size").unwrap();
        assert_eq!(second.resolve(&data), [&json!(20)]);
        let missing = FieldPath::parse("inventory.disks[5].size").unwrap();
        assert!(missing.resolve(&data).is_empty());
        assert_eq!(
            FieldPath::parse("memory_mb").unwrap().root(),
            Root::Properties
        );
        assert_eq!(
            FieldPath::parse("node://properties.cpus").unwrap().root(),
            Root::Node
        );
    }

    #[test]
    fn malformed_paths_are_refused() {
        for bad in [
            "",
            "inventory.disks[",
            "inventory..cpu",
            "inventory.disks[x]",
            "a]b[",
        ] {
            assert!(FieldPath::parse(bad).is_err(), "{bad:?}");
        }
    }
}
