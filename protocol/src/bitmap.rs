//! A fixed-length bit set: which chunks of a blob a node (or a peer) has.
//!
//! Bitmaps are the unit of progress everywhere: the scheduler keeps one for itself and one per
//! peer, peers exchange them in `Have` responses, and the node stores a blob's progress as one
//! bitmap value. It is not a general-purpose growable bit vector: the length is fixed at
//! creation and every binary operation refuses operands of another length.
//!
//! Data flow: bytes from an untrusted peer → `Deserialize` (which checks that the byte count
//! matches the length and that no bit beyond the length is set) → a `Bitmap` whose invariant
//! the rest of the crate relies on: words beyond `len` bits are always zero, so `count_ones`,
//! `is_full` and equality need no masking.

use std::fmt;

/// Errors from combining bitmaps or decoding one from its serialized form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BitmapError {
    #[error("bitmaps of different lengths: {left} and {right} bits")]
    LengthMismatch { left: u32, right: u32 },
    #[error("a bitmap of {len} bits needs {expected} bytes, got {actual}")]
    WrongByteCount {
        len: u32,
        expected: usize,
        actual: usize,
    },
    #[error("a bitmap of {len} bits has bits set beyond its length")]
    BitsBeyondLength { len: u32 },
}

/// A set of `len` bits, numbered `0..len`.
///
/// Invariant: `words.len() == ceil(len / 64)` and every bit at index `>= len` is zero.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Bitmap {
    words: Vec<u64>,
    len: u32,
}

fn word_count(len: u32) -> usize {
    (len as usize).div_ceil(64)
}

/// The mask of valid bits in the last word, or all ones when `len` is a multiple of 64.
fn last_word_mask(len: u32) -> u64 {
    match len % 64 {
        0 => u64::MAX,
        bits => (1u64 << bits) - 1,
    }
}

impl Bitmap {
    /// A bitmap of `len` bits, all clear.
    pub fn new(len: u32) -> Self {
        Bitmap {
            words: vec![0; word_count(len)],
            len,
        }
    }

    /// A bitmap of `len` bits with `ones` set (indexes past the end are ignored).
    pub fn with_ones(len: u32, ones: impl IntoIterator<Item = u32>) -> Self {
        let mut bitmap = Bitmap::new(len);
        for one in ones {
            bitmap.set(one);
        }
        bitmap
    }

    /// A bitmap of `len` bits, all set.
    pub fn full(len: u32) -> Self {
        let mut words = vec![u64::MAX; word_count(len)];
        if let Some(last) = words.last_mut() {
            *last &= last_word_mask(len);
        }
        Bitmap { words, len }
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether the bitmap has no bits at all (length zero), not whether no bit is set.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether bit `index` is set; `false` for any index beyond the length.
    pub fn get(&self, index: u32) -> bool {
        if index >= self.len {
            return false;
        }
        self.words[(index / 64) as usize] & (1 << (index % 64)) != 0
    }

    /// Sets bit `index` and returns whether it was clear before. An index beyond the length is
    /// ignored (returns `false`): callers check ranges where the index comes from a peer.
    pub fn set(&mut self, index: u32) -> bool {
        if index >= self.len {
            return false;
        }
        let word = &mut self.words[(index / 64) as usize];
        let bit = 1 << (index % 64);
        let was_clear = *word & bit == 0;
        *word |= bit;
        was_clear
    }

    /// Clears bit `index` and returns whether it was set before. Out-of-range indexes are
    /// ignored, as in [`Bitmap::set`].
    pub fn clear(&mut self, index: u32) -> bool {
        if index >= self.len {
            return false;
        }
        let word = &mut self.words[(index / 64) as usize];
        let bit = 1 << (index % 64);
        let was_set = *word & bit != 0;
        *word &= !bit;
        was_set
    }

    pub fn count_ones(&self) -> u32 {
        self.words.iter().map(|w| w.count_ones()).sum()
    }

    pub fn count_zeros(&self) -> u32 {
        self.len - self.count_ones()
    }

    /// Whether every bit is set (true for a zero-length bitmap).
    pub fn is_full(&self) -> bool {
        let Some((last, rest)) = self.words.split_last() else {
            return true;
        };
        rest.iter().all(|&w| w == u64::MAX) && *last == last_word_mask(self.len)
    }

    /// Indexes of the set bits, ascending.
    pub fn iter_ones(&self) -> impl Iterator<Item = u32> + '_ {
        BitIter::new(&self.words, |w| w)
    }

    /// Indexes of the clear bits below the length, ascending.
    pub fn iter_zeros(&self) -> impl Iterator<Item = u32> + '_ {
        let len = self.len;
        BitIter::new(&self.words, |w| !w).take_while(move |&i| i < len)
    }

    /// The 64-bit words, least significant bit first; bits beyond the length are zero.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    fn check_len(&self, other: &Bitmap) -> Result<(), BitmapError> {
        if self.len == other.len {
            Ok(())
        } else {
            Err(BitmapError::LengthMismatch {
                left: self.len,
                right: other.len,
            })
        }
    }

    /// `self |= other`.
    pub fn union_with(&mut self, other: &Bitmap) -> Result<(), BitmapError> {
        self.check_len(other)?;
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
        Ok(())
    }

    /// `self &= !other`: clears every bit that is set in `other`.
    pub fn subtract(&mut self, other: &Bitmap) -> Result<(), BitmapError> {
        self.check_len(other)?;
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a &= !b;
        }
        Ok(())
    }

    /// `self & !other` as a new bitmap: what `self` has that `other` lacks.
    pub fn and_not(&self, other: &Bitmap) -> Result<Bitmap, BitmapError> {
        let mut result = self.clone();
        result.subtract(other)?;
        Ok(result)
    }

    /// Whether `self` has any bit that `other` lacks, without allocating.
    pub fn has_any_not_in(&self, other: &Bitmap) -> Result<bool, BitmapError> {
        self.check_len(other)?;
        Ok(self
            .words
            .iter()
            .zip(&other.words)
            .any(|(a, b)| a & !b != 0))
    }

    /// The bits as little-endian bytes, `ceil(len / 8)` of them: the serialized form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let byte_count = (self.len as usize).div_ceil(8);
        let mut bytes: Vec<u8> = self.words.iter().flat_map(|w| w.to_le_bytes()).collect();
        bytes.truncate(byte_count);
        bytes
    }

    /// The inverse of [`Bitmap::to_bytes`], refusing a wrong byte count or stray bits.
    pub fn from_bytes(len: u32, bytes: &[u8]) -> Result<Bitmap, BitmapError> {
        let expected = (len as usize).div_ceil(8);
        if bytes.len() != expected {
            return Err(BitmapError::WrongByteCount {
                len,
                expected,
                actual: bytes.len(),
            });
        }
        let words: Vec<u64> = bytes
            .chunks(8)
            .map(|chunk| {
                let mut word = [0u8; 8];
                word[..chunk.len()].copy_from_slice(chunk);
                u64::from_le_bytes(word)
            })
            .collect();
        if let Some(last) = words.last()
            && last & !last_word_mask(len) != 0
        {
            return Err(BitmapError::BitsBeyondLength { len });
        }
        Ok(Bitmap { words, len })
    }
}

/// Iterates set bits of `transform(word)` over a word slice.
struct BitIter<'a, F> {
    words: &'a [u64],
    transform: F,
    index: usize,
    current: u64,
}

impl<'a, F: Fn(u64) -> u64> BitIter<'a, F> {
    fn new(words: &'a [u64], transform: F) -> Self {
        let current = words.first().map_or(0, |&w| transform(w));
        BitIter {
            words,
            transform,
            index: 0,
            current,
        }
    }
}

impl<F: Fn(u64) -> u64> Iterator for BitIter<'_, F> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        loop {
            if self.current != 0 {
                let bit = self.current.trailing_zeros();
                self.current &= self.current - 1;
                // `len` is a u32, so every index fits.
                return Some((self.index as u32) * 64 + bit);
            }
            self.index += 1;
            let word = *self.words.get(self.index)?;
            self.current = (self.transform)(word);
        }
    }
}

impl fmt::Debug for Bitmap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bitmap({}/{} ", self.count_ones(), self.len)?;
        // Short bitmaps print every bit; long ones only the summary.
        if self.len <= 128 {
            for i in 0..self.len {
                f.write_str(if self.get(i) { "1" } else { "0" })?;
            }
        } else {
            f.write_str("…")?;
        }
        f.write_str(")")
    }
}

/// The serialized form: the length and `ceil(len / 8)` little-endian bytes.
#[derive(serde::Serialize, serde::Deserialize)]
struct BitmapRepr {
    len: u32,
    #[serde(with = "serde_bytes")]
    bytes: Vec<u8>,
}

impl serde::Serialize for Bitmap {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        BitmapRepr {
            len: self.len,
            bytes: self.to_bytes(),
        }
        .serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for Bitmap {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let repr = BitmapRepr::deserialize(deserializer)?;
        Bitmap::from_bytes(repr.len, &repr.bytes).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Lengths around word and byte boundaries.
    const LENGTHS: [u32; 12] = [0, 1, 7, 8, 9, 63, 64, 65, 127, 128, 129, 1000];

    fn arbitrary_bitmap() -> impl Strategy<Value = Bitmap> {
        (0u32..300).prop_flat_map(|len| {
            proptest::collection::vec(any::<bool>(), len as usize).prop_map(move |bits| {
                let mut bitmap = Bitmap::new(len);
                for (i, bit) in bits.into_iter().enumerate() {
                    if bit {
                        bitmap.set(i as u32);
                    }
                }
                bitmap
            })
        })
    }

    #[test]
    fn new_and_full_at_boundary_lengths() {
        for len in LENGTHS {
            let empty = Bitmap::new(len);
            let full = Bitmap::full(len);
            assert_eq!(empty.len(), len);
            assert_eq!(empty.count_ones(), 0, "{len}");
            assert_eq!(full.count_ones(), len, "{len}");
            assert_eq!(full.count_zeros(), 0, "{len}");
            assert!(full.is_full(), "{len}");
            assert_eq!(empty.is_full(), len == 0, "{len}");
            assert_eq!(full.iter_ones().count() as u32, len);
            assert_eq!(
                empty.iter_zeros().collect::<Vec<_>>(),
                (0..len).collect::<Vec<_>>()
            );
            assert_eq!(full.iter_zeros().count(), 0);
            assert!(!full.get(len), "bit beyond the length reads as clear");
        }
    }

    #[test]
    fn set_and_clear_report_changes_and_ignore_out_of_range() {
        let mut bitmap = Bitmap::new(65);
        assert!(bitmap.set(64));
        assert!(!bitmap.set(64));
        assert!(bitmap.get(64));
        assert!(!bitmap.set(65));
        assert!(!bitmap.set(u32::MAX));
        assert_eq!(bitmap.count_ones(), 1);
        assert!(bitmap.clear(64));
        assert!(!bitmap.clear(64));
        assert!(!bitmap.clear(1000));
        assert_eq!(bitmap, Bitmap::new(65));
    }

    #[test]
    fn set_operations_refuse_other_lengths() {
        let mut a = Bitmap::new(10);
        let b = Bitmap::new(11);
        let mismatch = BitmapError::LengthMismatch {
            left: 10,
            right: 11,
        };
        assert_eq!(a.union_with(&b), Err(mismatch.clone()));
        assert_eq!(a.subtract(&b), Err(mismatch.clone()));
        assert_eq!(a.and_not(&b), Err(mismatch.clone()));
        assert_eq!(a.has_any_not_in(&b), Err(mismatch));
    }

    #[test]
    fn deserialization_refuses_inconsistent_input() {
        assert_eq!(
            Bitmap::from_bytes(9, &[0xff]),
            Err(BitmapError::WrongByteCount {
                len: 9,
                expected: 2,
                actual: 1
            })
        );
        assert_eq!(
            Bitmap::from_bytes(9, &[0xff, 0x02]),
            Err(BitmapError::BitsBeyondLength { len: 9 })
        );
        assert_eq!(
            Bitmap::from_bytes(0, &[0]),
            Err(BitmapError::WrongByteCount {
                len: 0,
                expected: 0,
                actual: 1
            })
        );
        let ok = Bitmap::from_bytes(9, &[0xff, 0x01]).unwrap();
        assert!(ok.is_full());
        let json = r#"{"len":9,"bytes":[255,3]}"#;
        assert!(serde_json::from_str::<Bitmap>(json).is_err());
        let json = r#"{"len":9,"bytes":[255,1]}"#;
        assert_eq!(serde_json::from_str::<Bitmap>(json).unwrap(), ok);
    }

    proptest! {
        #[test]
        fn bytes_round_trip(bitmap in arbitrary_bitmap()) {
            let bytes = bitmap.to_bytes();
            prop_assert_eq!(bytes.len(), (bitmap.len() as usize).div_ceil(8));
            prop_assert_eq!(Bitmap::from_bytes(bitmap.len(), &bytes), Ok(bitmap.clone()));
            let json = serde_json::to_string(&bitmap).unwrap();
            prop_assert_eq!(serde_json::from_str::<Bitmap>(&json).unwrap(), bitmap);
        }

        #[test]
        fn ones_and_zeros_partition_the_range(bitmap in arbitrary_bitmap()) {
            let ones: Vec<u32> = bitmap.iter_ones().collect();
            let zeros: Vec<u32> = bitmap.iter_zeros().collect();
            prop_assert_eq!(ones.len() as u32, bitmap.count_ones());
            prop_assert_eq!(zeros.len() as u32, bitmap.count_zeros());
            prop_assert!(ones.iter().all(|&i| bitmap.get(i)));
            prop_assert!(zeros.iter().all(|&i| !bitmap.get(i)));
            let mut all: Vec<u32> = ones.into_iter().chain(zeros).collect();
            all.sort_unstable();
            prop_assert_eq!(all, (0..bitmap.len()).collect::<Vec<_>>());
        }

        #[test]
        fn set_algebra_matches_per_bit_logic(
            (a, b) in (0u32..200).prop_flat_map(|len| {
                let bits = proptest::collection::vec(any::<bool>(), len as usize);
                (bits.clone(), bits)
            })
        ) {
            let len = a.len() as u32;
            let mut x = Bitmap::new(len);
            let mut y = Bitmap::new(len);
            for i in 0..len {
                if a[i as usize] { x.set(i); }
                if b[i as usize] { y.set(i); }
            }
            let mut union = x.clone();
            union.union_with(&y).unwrap();
            let diff = x.and_not(&y).unwrap();
            for i in 0..len {
                prop_assert_eq!(union.get(i), x.get(i) || y.get(i));
                prop_assert_eq!(diff.get(i), x.get(i) && !y.get(i));
            }
            prop_assert_eq!(x.has_any_not_in(&y).unwrap(), diff.count_ones() > 0);
            prop_assert_eq!(union.is_full(), (0..len).all(|i| x.get(i) || y.get(i)));
        }

        #[test]
        fn arbitrary_bytes_never_break_the_invariant(len in 0u32..200, bytes in proptest::collection::vec(any::<u8>(), 0..30)) {
            if let Ok(bitmap) = Bitmap::from_bytes(len, &bytes) {
                prop_assert_eq!(bitmap.to_bytes(), bytes);
                prop_assert!(bitmap.iter_ones().all(|i| i < len));
                prop_assert_eq!(bitmap.count_ones() + bitmap.count_zeros(), len);
            }
        }
    }
}
