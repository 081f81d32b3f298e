//! user-data merging, as Mirantis Virtlet did it: maps recurse, lists append, scalars override.

use serde_yaml_ng::Value;

/// Merges `over` into `base` (pure).
pub fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (Value::Sequence(b), Value::Sequence(o)) => b.extend(o),
        (b, o) => *b = o,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn y(s: &str) -> Value {
        serde_yaml_ng::from_str(s).unwrap()
    }

    #[test]
    fn maps_recurse_lists_append_scalars_override() {
        let mut base = y("a: 1\nb: {c: 2, d: [1]}\nl: [x]\n");
        merge(&mut base, y("a: 9\nb: {d: [2], e: 3}\nl: [y]\nn: new\n"));
        assert_eq!(
            base,
            y("a: 9\nb: {c: 2, d: [1, 2], e: 3}\nl: [x, y]\nn: new\n")
        );
    }

    #[test]
    fn type_changes_take_the_new_value() {
        let mut base = y("a: [1]\nb: {c: 1}\n");
        merge(&mut base, y("a: {x: 1}\nb: 7\n"));
        assert_eq!(base, y("a: {x: 1}\nb: 7\n"));
    }
}
