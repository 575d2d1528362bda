//! The accepted emoji set and how an incoming string is matched against it.
//!
//! Phones send some emojis with a variation selector (U+FE0F, "emoji presentation") and some without:
//! `❤` and `❤️` are the same reaction. Matching strips the selectors, so both count as one emoji, shown
//! in the form the set was configured with.

use std::collections::HashMap;
use std::sync::Arc;

/// The reactions shown when no `--emojis` is given: the original client's 😀 😂 😍 👍 and the usual
/// reactions of a live match.
pub const DEFAULT_EMOJIS: &[&str] = &["😀", "😂", "😍", "👍", "❤️", "🔥", "👏", "🎉", "😮", "😱", "😢", "😡", "👎", "🙏", "💯", "🤔"];

/// Longest emoji accepted, in bytes: family and flag sequences fit; anything longer is not one emoji.
const MAX_EMOJI_BYTES: usize = 64;

/// Index of an emoji in its [`EmojiSet`]: a cheap copyable handle for the hot path.
pub type EmojiId = u16;

/// Why a string is not accepted as an emoji.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmojiSetError {
    #[error("the emoji set is empty: give at least one emoji")]
    Empty,
    #[error("{0:?} appears twice in the emoji set (variation selectors are ignored)")]
    Duplicate(String),
    #[error("{0:?} is not an emoji (it has letters, digits, spaces or is over {MAX_EMOJI_BYTES} bytes)")]
    NotAnEmoji(String),
    #[error("the emoji set holds at most {max} emojis, got {got}")]
    TooMany { max: usize, got: usize },
}

/// The emojis a pipeline accepts. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct EmojiSet {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Display form, as configured, indexed by [`EmojiId`].
    display: Vec<Arc<str>>,
    /// Selector-free form → id.
    by_key: HashMap<String, EmojiId>,
}

/// Removes variation selectors (U+FE0E text, U+FE0F emoji presentation), which do not change which
/// emoji a user meant.
fn key_of(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains(['\u{FE0F}', '\u{FE0E}']) {
        std::borrow::Cow::Owned(s.chars().filter(|c| !matches!(c, '\u{FE0F}' | '\u{FE0E}')).collect())
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

fn looks_like_emoji(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_EMOJI_BYTES
        && !s.chars().any(|c| c.is_alphanumeric() || c.is_whitespace() || c.is_control() || c.is_ascii())
}

impl EmojiSet {
    /// Builds a set from display forms.
    ///
    /// # Errors
    /// When the list is empty, has a duplicate (also one differing only by a variation selector), or
    /// holds something that is not an emoji.
    pub fn new<S: AsRef<str>>(emojis: &[S]) -> Result<Self, EmojiSetError> {
        if emojis.is_empty() {
            return Err(EmojiSetError::Empty);
        }
        if emojis.len() > usize::from(EmojiId::MAX) {
            return Err(EmojiSetError::TooMany { max: usize::from(EmojiId::MAX), got: emojis.len() });
        }
        let mut display = Vec::with_capacity(emojis.len());
        let mut by_key = HashMap::with_capacity(emojis.len());
        for (i, e) in emojis.iter().enumerate() {
            let e = e.as_ref().trim();
            if !looks_like_emoji(e) {
                return Err(EmojiSetError::NotAnEmoji(e.to_string()));
            }
            let id = EmojiId::try_from(i).expect("bounded above");
            if by_key.insert(key_of(e).into_owned(), id).is_some() {
                return Err(EmojiSetError::Duplicate(e.to_string()));
            }
            display.push(Arc::<str>::from(e));
        }
        Ok(Self { inner: Arc::new(Inner { display, by_key }) })
    }

    /// Parses a comma- or space-separated list, as given to `--emojis`.
    ///
    /// # Errors
    /// As [`EmojiSet::new`].
    pub fn parse_list(list: &str) -> Result<Self, EmojiSetError> {
        let items: Vec<&str> = list.split([',', ' ']).map(str::trim).filter(|s| !s.is_empty()).collect();
        Self::new(&items)
    }

    /// The id of `s`, ignoring variation selectors; `None` when it is not in the set.
    pub fn lookup(&self, s: &str) -> Option<EmojiId> {
        self.inner.by_key.get(key_of(s).as_ref()).copied()
    }

    /// The display form of an id from this set.
    ///
    /// # Panics
    /// If `id` did not come from this set.
    pub fn display(&self, id: EmojiId) -> &Arc<str> {
        &self.inner.display[usize::from(id)]
    }

    /// The canonical display form of `s` if it is in the set.
    pub fn canonical(&self, s: &str) -> Option<&Arc<str>> {
        self.lookup(s).map(|id| self.display(id))
    }

    pub fn len(&self) -> usize {
        self.inner.display.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.display.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<str>> {
        self.inner.display.iter()
    }
}

impl std::fmt::Display for EmojiSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(e)?;
        }
        Ok(())
    }
}

impl Default for EmojiSet {
    fn default() -> Self {
        Self::new(DEFAULT_EMOJIS).expect("the default emoji set is valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_set_has_the_original_clients_emojis() {
        let set = EmojiSet::default();
        for e in ["😀", "😂", "😍", "👍"] {
            assert!(set.lookup(e).is_some(), "{e} missing");
        }
    }

    #[test]
    fn heart_with_and_without_variation_selector_is_one_emoji() {
        let set = EmojiSet::default();
        let a = set.lookup("❤").unwrap();
        let b = set.lookup("❤\u{FE0F}").unwrap();
        assert_eq!(a, b);
        assert_eq!(set.display(a).as_ref(), "❤️");
    }

    #[test]
    fn configured_without_selector_still_matches_with_one() {
        let set = EmojiSet::parse_list("❤, 👍").unwrap();
        assert_eq!(set.lookup("❤️"), Some(0));
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn rejects_bad_sets() {
        assert_eq!(EmojiSet::parse_list("").unwrap_err(), EmojiSetError::Empty);
        assert!(matches!(EmojiSet::parse_list("❤,❤️").unwrap_err(), EmojiSetError::Duplicate(_)));
        assert!(matches!(EmojiSet::parse_list("😀,abc").unwrap_err(), EmojiSetError::NotAnEmoji(_)));
    }

    #[test]
    fn text_is_not_in_the_set() {
        let set = EmojiSet::default();
        assert_eq!(set.lookup("smile"), None);
        assert_eq!(set.lookup(""), None);
    }
}
