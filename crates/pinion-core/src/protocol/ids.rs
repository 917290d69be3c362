//! Request and survey ids (REQ, SURVEYOR): 32 bits with the top bit set,
//! from a random start, incrementing, skipping ids still in use — as NNG's
//! id maps over `0x8000_0000..=0xffff_ffff`.

/// The bit that marks the last word of a backtrace (the request/survey id).
pub(crate) const END_BIT: u32 = 0x8000_0000;

/// The next free id after `*next` (advanced past it); `in_use` says which
/// ids are taken. The caller keeps far fewer than 2^31 ids alive.
pub(crate) fn alloc(next: &mut u32, in_use: impl Fn(u32) -> bool) -> u32 {
    loop {
        let id = END_BIT | *next;
        *next = next.wrapping_add(1) & !END_BIT;
        if !in_use(id) {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn skips_ids_in_use_and_wraps_within_31_bits() {
        let mut next = 0x7fff_ffff;
        assert_eq!(super::alloc(&mut next, |_| false), 0xffff_ffff);
        assert_eq!(next, 0);
        assert_eq!(super::alloc(&mut next, |id| id == 0x8000_0000), 0x8000_0001);
    }
}
