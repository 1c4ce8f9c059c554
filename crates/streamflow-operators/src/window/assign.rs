//! Which windows a timestamp belongs to, and when a window is complete:
//! pure functions, tested exhaustively here.

/// Tumbling or sliding assignment, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assigner {
    /// Window length.
    pub size: i64,
    /// Distance between window starts (`size` for tumbling).
    pub slide: i64,
}

impl Assigner {
    /// Starts of every window containing `ts`, ascending.
    pub fn windows(&self, ts: i64) -> impl Iterator<Item = i64> + use<> {
        let last = ts - ts.rem_euclid(self.slide);
        let size = self.size;
        let slide = self.slide;
        let count = (size + slide - 1) / slide;
        (0..count)
            .rev()
            .map(move |k| last - k * slide)
            .filter(move |s| ts < s + size)
    }
    /// Whether the window starting at `start` has fired at `watermark`.
    pub fn fired(&self, start: i64, watermark: i64) -> bool {
        start + self.size - 1 <= watermark
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tumbling_boundaries() {
        let a = Assigner {
            size: 10,
            slide: 10,
        };
        assert_eq!(a.windows(0).collect::<Vec<_>>(), vec![0]);
        assert_eq!(a.windows(9).collect::<Vec<_>>(), vec![0]);
        assert_eq!(a.windows(10).collect::<Vec<_>>(), vec![10]);
        assert_eq!(a.windows(-1).collect::<Vec<_>>(), vec![-10]);
        assert!(!a.fired(0, 8));
        assert!(a.fired(0, 9));
    }

    #[test]
    fn sliding_boundaries() {
        let a = Assigner { size: 10, slide: 4 };
        assert_eq!(a.windows(9).collect::<Vec<_>>(), vec![0, 4, 8]);
        assert_eq!(a.windows(10).collect::<Vec<_>>(), vec![4, 8]);
        let b = Assigner { size: 10, slide: 5 };
        assert_eq!(b.windows(5).collect::<Vec<_>>(), vec![0, 5]);
    }

    proptest! {
        #[test]
        fn every_window_contains_its_timestamp(ts in -1_000_000i64..1_000_000, size in 1i64..500, slide_div in 1i64..20) {
            let slide = (size / slide_div).max(1);
            let a = Assigner { size, slide };
            let starts: Vec<i64> = a.windows(ts).collect();
            for s in &starts {
                prop_assert!(*s <= ts && ts < s + size);
                prop_assert_eq!(s.rem_euclid(slide), 0);
            }
            // Exactly the windows containing ts.
            let expected = (ts - size + 1..=ts).filter(|s| s.rem_euclid(slide) == 0).count();
            prop_assert_eq!(starts.len(), expected);
        }
    }
}
