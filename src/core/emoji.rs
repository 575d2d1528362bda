//! The accepted emoji set and how an incoming string is matched against it.
//!
//! Phones send some emojis with a variation selector (U+FE0F, "emoji presentation") and some without:
//! `❤` and `❤️` are the same reaction. Matching strips the selectors, so both count as one emoji, shown
//! in the form the set was configured with. Phones also send skin-tone variants (`👍🏽`, a modifier
//! U+1F3FB–U+1F3FF after the base emoji): by default ([`SkinTones::Fold`]) they count as their base
//! emoji; with [`SkinTones::Keep`] each tone is its own emoji and must be in the set to be accepted.
//!
//! What an emoji is comes from Unicode's emoji list (the `emojis` crate, generated from it): a set
//! holding `§` or `→` is refused when it is configured, not discovered when nobody can tap it.

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
    #[error("“{0}” appears twice in the emoji set (variation selectors, and skin tones unless kept, are ignored)")]
    Duplicate(String),
    #[error("“{0}” is not an emoji (not in Unicode's emoji list; separate emojis with commas)")]
    NotAnEmoji(String),
    #[error("the emoji set holds at most {max} emojis, got {got}")]
    TooMany { max: usize, got: usize },
}

/// What a skin-tone modifier on an incoming emoji means (`--skin-tones`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SkinTones {
    /// `👍🏽` counts as `👍`: one reaction whatever the sender's tone.
    #[default]
    Fold,
    /// `👍🏽` is its own emoji, accepted only when the set holds it.
    Keep,
}

impl std::str::FromStr for SkinTones {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fold" => Ok(Self::Fold),
            "keep" => Ok(Self::Keep),
            _ => Err(format!("expected `fold` (👍🏽 counts as 👍) or `keep` (each tone its own emoji), got {s:?}")),
        }
    }
}

impl std::fmt::Display for SkinTones {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fold => "fold",
            Self::Keep => "keep",
        })
    }
}

/// The emojis a pipeline accepts. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct EmojiSet {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tones: SkinTones,
    /// Display form, as configured, indexed by [`EmojiId`].
    display: Vec<Arc<str>>,
    /// Selector-free form → id.
    by_key: HashMap<String, EmojiId>,
}

/// Removes variation selectors (U+FE0E text, U+FE0F emoji presentation), which do not change which
/// emoji a user meant, and with [`SkinTones::Fold`] skin-tone modifiers (U+1F3FB–U+1F3FF).
fn key_of(s: &str, tones: SkinTones) -> std::borrow::Cow<'_, str> {
    let drop = |c: char| matches!(c, '\u{FE0F}' | '\u{FE0E}') || (tones == SkinTones::Fold && is_skin_tone(c));
    if s.chars().any(drop) { std::borrow::Cow::Owned(s.chars().filter(|&c| !drop(c)).collect()) } else { std::borrow::Cow::Borrowed(s) }
}

fn is_skin_tone(c: char) -> bool {
    ('\u{1F3FB}'..='\u{1F3FF}').contains(&c)
}

/// Whether `s` is one emoji of Unicode's list (with or without its variation selector).
fn is_emoji(s: &str) -> bool {
    s.len() <= MAX_EMOJI_BYTES && emojis::get(s).is_some()
}

impl EmojiSet {
    /// Builds a set from display forms.
    ///
    /// # Errors
    /// When the list is empty, has a duplicate (also one differing only by a variation selector), or
    /// holds something that is not an emoji.
    pub fn new<S: AsRef<str>>(emojis: &[S]) -> Result<Self, EmojiSetError> {
        Self::with_tones(emojis, SkinTones::default())
    }

    /// As [`EmojiSet::new`], with skin tones folded or kept.
    ///
    /// # Errors
    /// As [`EmojiSet::new`]; with [`SkinTones::Fold`], `👍` and `👍🏽` in one set are a duplicate.
    pub fn with_tones<S: AsRef<str>>(emojis: &[S], tones: SkinTones) -> Result<Self, EmojiSetError> {
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
            if !is_emoji(e) {
                return Err(EmojiSetError::NotAnEmoji(e.to_string()));
            }
            let id = EmojiId::try_from(i).expect("bounded above");
            if by_key.insert(key_of(e, tones).into_owned(), id).is_some() {
                return Err(EmojiSetError::Duplicate(e.to_string()));
            }
            display.push(Arc::<str>::from(e));
        }
        Ok(Self { inner: Arc::new(Inner { tones, display, by_key }) })
    }

    /// The same emojis with skin tones folded or kept.
    ///
    /// # Errors
    /// When folding makes two of them one (`👍` and `👍🏽`).
    pub fn skin_tones(&self, tones: SkinTones) -> Result<Self, EmojiSetError> {
        if tones == self.inner.tones {
            return Ok(self.clone());
        }
        Self::with_tones(&self.inner.display, tones)
    }

    /// Whether skin tones are folded or kept.
    pub fn tones(&self) -> SkinTones {
        self.inner.tones
    }

    /// Parses a comma- or space-separated list, as given to `--emojis`.
    ///
    /// # Errors
    /// As [`EmojiSet::new`].
    pub fn parse_list(list: &str) -> Result<Self, EmojiSetError> {
        Self::parse_list_with(list, SkinTones::default())
    }

    /// As [`EmojiSet::parse_list`], with skin tones folded or kept.
    ///
    /// # Errors
    /// As [`EmojiSet::with_tones`].
    pub fn parse_list_with(list: &str, tones: SkinTones) -> Result<Self, EmojiSetError> {
        let items: Vec<&str> = list.split([',', ' ']).map(str::trim).filter(|s| !s.is_empty()).collect();
        Self::with_tones(&items, tones)
    }

    /// The id of `s`, ignoring variation selectors (and skin tones, when folded); `None` when it
    /// is not in the set.
    pub fn lookup(&self, s: &str) -> Option<EmojiId> {
        if s.len() > MAX_EMOJI_BYTES {
            return None;
        }
        self.inner.by_key.get(key_of(s, self.inner.tones).as_ref()).copied()
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

    #[test]
    fn skin_tones_fold_to_their_base_emoji_by_default() {
        let set = EmojiSet::default();
        assert_eq!(set.lookup("👍🏽"), set.lookup("👍"));
        assert_eq!(set.lookup("👏🏿"), set.lookup("👏"));
        assert!(set.lookup("👍🏽").is_some());
        assert_eq!(set.canonical("👍🏻").map(|d| d.as_ref()), Some("👍"));
    }

    #[test]
    fn kept_skin_tones_are_their_own_emojis() {
        let set = EmojiSet::with_tones(&["👍", "👍🏽"], SkinTones::Keep).unwrap();
        assert_eq!(set.lookup("👍"), Some(0));
        assert_eq!(set.lookup("👍🏽"), Some(1));
        assert_eq!(set.lookup("👍🏿"), None, "a tone not in the set is refused");
        let folded = EmojiSet::with_tones(&["👍", "👍🏽"], SkinTones::Fold).unwrap_err();
        assert_eq!(folded, EmojiSetError::Duplicate("👍🏽".into()));
        assert!(EmojiSet::default().skin_tones(SkinTones::Keep).unwrap().lookup("👍🏽").is_none());
    }

    #[test]
    fn symbols_that_are_not_emojis_are_refused_by_name() {
        for s in ["§", "→", "€", "★", "😀😀"] {
            let e = EmojiSet::parse_list(&format!("😀,{s}")).unwrap_err();
            assert_eq!(e, EmojiSetError::NotAnEmoji(s.into()), "{s}");
            assert!(e.to_string().contains(&format!("“{s}”")), "the message shows the symbol itself: {e}");
        }
        // Flags, families and keycaps are emojis.
        assert_eq!(EmojiSet::parse_list("🇮🇳,👨‍👩‍👧,1️⃣,💯").unwrap().len(), 4);
    }
}
