//! Matching of CRI list filters (pure).

use std::collections::HashMap;

/// Whether `labels` has every key/value of `selector`.
pub fn labels_match(selector: &HashMap<String, String>, labels: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether an ID filter (a full ID or a unique prefix, as crictl sends) admits `id`.
pub fn id_matches(filter: &str, id: &str) -> bool {
    filter.is_empty() || id.starts_with(filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let labels: HashMap<String, String> =
            [("app".into(), "vm".into()), ("tier".into(), "x".into())].into();
        assert!(labels_match(&HashMap::new(), &labels));
        assert!(labels_match(&[("app".into(), "vm".into())].into(), &labels));
        assert!(!labels_match(
            &[("app".into(), "db".into())].into(),
            &labels
        ));
        assert!(!labels_match(
            &[("zone".into(), "a".into())].into(),
            &labels
        ));
        assert!(id_matches("", "abc") && id_matches("ab", "abc") && !id_matches("b", "abc"));
    }
}
