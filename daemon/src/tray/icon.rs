//! The tray icon's picture, drawn here (no image files to ship): a 2 × 2 mosaic of tiles whose
//! colour tells the state — slate when idle, green while a job runs, red after a failure.

/// What the icon shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    Idle,
    Busy,
    Error,
}

impl Look {
    /// The tiles' colour.
    pub fn colour(self) -> [u8; 3] {
        match self {
            Look::Idle => [96, 112, 150],
            Look::Busy => [46, 160, 84],
            Look::Error => [206, 54, 46],
        }
    }
}

pub const SIZE: u32 = 32;

/// RGBA pixels, `SIZE` × `SIZE`: four 14-pixel tiles with 2-pixel gaps, transparent around.
pub fn pixels(look: Look) -> Vec<u8> {
    let [r, g, b] = look.colour();
    let mut out = vec![0u8; (SIZE * SIZE * 4) as usize];
    for y in 0..SIZE {
        for x in 0..SIZE {
            let inside = |v: u32| (1..15).contains(&v) || (17..31).contains(&v);
            if inside(x) && inside(y) {
                let i = ((y * SIZE + x) * 4) as usize;
                out[i..i + 4].copy_from_slice(&[r, g, b, 255]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_state_has_its_own_colour_and_the_corners_are_clear() {
        let idle = pixels(Look::Idle);
        assert_eq!(idle.len(), 32 * 32 * 4);
        assert_eq!(&idle[0..4], &[0, 0, 0, 0]);
        let centre_of_first_tile = ((8 * SIZE + 8) * 4) as usize;
        assert_eq!(
            &idle[centre_of_first_tile..centre_of_first_tile + 3],
            &Look::Idle.colour()
        );
        assert_ne!(Look::Busy.colour(), Look::Error.colour());
        assert_ne!(Look::Idle.colour(), Look::Busy.colour());
    }
}
