//! A map from canonical tensor names to anything (source descriptors, external weights), with
//! scoped access so network code names tensors the way the module tree does.

use std::collections::BTreeMap;
use std::fmt::Display;

use super::WeightsError;

/// Tensors by dotted canonical name (`body.0.rdb1.conv1.weight`), sorted.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorMap<T> {
    entries: BTreeMap<String, T>,
}

impl<T> Default for TensorMap<T> {
    fn default() -> Self {
        TensorMap {
            entries: BTreeMap::new(),
        }
    }
}

impl<T> TensorMap<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces; returns the previous entry.
    pub fn insert(&mut self, name: impl Into<String>, value: T) -> Option<T> {
        self.entries.insert(name.into(), value)
    }

    pub fn get(&self, name: &str) -> Option<&T> {
        self.entries.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// A new map with every value transformed (keeps the names).
    pub fn try_map<U, E>(
        &self,
        mut f: impl FnMut(&str, &T) -> Result<U, E>,
    ) -> Result<TensorMap<U>, E> {
        let mut out = TensorMap::new();
        for (k, v) in &self.entries {
            out.insert(k.clone(), f(k, v)?);
        }
        Ok(out)
    }

    /// The whole map as a scope with no prefix.
    pub fn root(&self) -> Scope<'_, T> {
        Scope {
            map: self,
            prefix: String::new(),
        }
    }

    /// Shorthand for `root().scope(name)`.
    pub fn scope(&self, name: impl Display) -> Scope<'_, T> {
        self.root().scope(name)
    }

    /// A short human description of the keys, for "unknown layout" errors.
    pub fn describe(&self) -> String {
        let first: Vec<&str> = self.keys().take(4).collect();
        format!("{} tensors, first keys: {}", self.len(), first.join(", "))
    }
}

impl<T> FromIterator<(String, T)> for TensorMap<T> {
    fn from_iter<I: IntoIterator<Item = (String, T)>>(iter: I) -> Self {
        TensorMap {
            entries: iter.into_iter().collect(),
        }
    }
}

/// A view of the tensors under one dotted prefix.
#[derive(Clone, Debug)]
pub struct Scope<'a, T> {
    map: &'a TensorMap<T>,
    prefix: String,
}

impl<'a, T> Scope<'a, T> {
    /// The sub-scope `name` (a module name or a block index).
    pub fn scope(&self, name: impl Display) -> Scope<'a, T> {
        Scope {
            map: self.map,
            prefix: format!("{}{}.", self.prefix, name),
        }
    }

    /// The full name `name` has in this scope.
    pub fn path(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name)
    }

    /// The tensor `name` in this scope, or `WeightsError::Missing` with its full name.
    pub fn get(&self, name: &str) -> Result<&'a T, WeightsError> {
        let full = self.path(name);
        self.map
            .get(&full)
            .ok_or(WeightsError::Missing { name: full })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.map.contains(&self.path(name))
    }

    /// Whether anything at all lives under this scope.
    pub fn exists(&self) -> bool {
        self.map.keys().any(|k| k.starts_with(&self.prefix))
    }

    /// How many numbered children `0, 1, 2, …` exist without a gap (e.g. blocks of a trunk).
    pub fn count_indexed(&self) -> usize {
        (0..).take_while(|i| self.scope(i).exists()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_build_dotted_names() {
        let map: TensorMap<u32> = [
            ("body.0.rdb1.conv1.weight".to_owned(), 1),
            ("body.1.rdb1.conv1.weight".to_owned(), 2),
            ("body.3.rdb1.conv1.weight".to_owned(), 3),
            ("conv_first.weight".to_owned(), 4),
        ]
        .into_iter()
        .collect();
        let body = map.scope("body");
        assert_eq!(*body.scope(1).scope("rdb1").get("conv1.weight").unwrap(), 2);
        assert_eq!(body.count_indexed(), 2, "counting stops at the first gap");
        assert!(map.root().contains("conv_first.weight"));
        match map.scope("conv_last").get("weight") {
            Err(WeightsError::Missing { name }) => assert_eq!(name, "conv_last.weight"),
            other => panic!("expected Missing, got {other:?}"),
        }
        assert!(
            !map.scope("conv").exists(),
            "a scope matches whole components only"
        );
        assert!(map.describe().starts_with("4 tensors, first keys: body.0"));
    }
}
