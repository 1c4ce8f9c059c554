//! The Nexmark data model: event kinds by number, id ranges around the most
//! recent people and auctions, hot items, prices and text, all pure
//! functions of the event number and a per-event random stream.

use std::sync::OnceLock;

pub(super) const PERSON_PROPORTION: u64 = 1;
pub(super) const AUCTION_PROPORTION: u64 = 3;
pub(super) const TOTAL_PROPORTION: u64 = 50;
pub(super) const FIRST_PERSON_ID: i64 = 1000;
pub(super) const FIRST_AUCTION_ID: i64 = 1000;
pub(super) const FIRST_CATEGORY_ID: i64 = 10;
pub(super) const NUM_CATEGORIES: u64 = 5;
pub(super) const NUM_ACTIVE_PEOPLE: i64 = 1000;
pub(super) const PERSON_ID_LEAD: i64 = 10;
pub(super) const NUM_IN_FLIGHT_AUCTIONS: i64 = 100;
pub(super) const AUCTION_ID_LEAD: i64 = 10;
pub(super) const HOT_AUCTION_RATIO: i64 = 2;
pub(super) const HOT_BIDDER_RATIO: i64 = 4;
pub(super) const HOT_SELLER_RATIO: i64 = 4;
pub(super) const HOT_CHANNELS_RATIO: u64 = 2;
pub(super) const CHANNELS_NUMBER: u64 = 10_000;
pub(super) const AVG_PERSON_BYTES: usize = 200;
pub(super) const AVG_AUCTION_BYTES: usize = 500;
pub(super) const AVG_BID_BYTES: usize = 100;

pub(super) const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
pub(super) const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
pub(super) const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];
pub(super) const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
pub(super) const US_CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Person,
    Auction,
    Bid,
}

impl Kind {
    pub(super) fn of(idx: u64) -> Kind {
        match idx % TOTAL_PROPORTION {
            o if o < PERSON_PROPORTION => Kind::Person,
            o if o < PERSON_PROPORTION + AUCTION_PROPORTION => Kind::Auction,
            _ => Kind::Bid,
        }
    }
}

/// SplitMix64, seeded per event: cheap, and independent of batch boundaries.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn for_event(seed: u64, idx: u64) -> Rng {
        let mut r = Rng(seed ^ idx.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        r.next_u64();
        r
    }
    pub(super) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub(super) fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
    pub(super) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// A log-uniform price in cents, $1 to $1M.
    pub(super) fn price(&mut self) -> i64 {
        (10f64.powf(self.unit() * 6.0) * 100.0).round() as i64
    }
    /// A pseudo-random lowercase string of `len` bytes from the shared pool.
    pub(super) fn text(&mut self, len: usize) -> &'static str {
        let pool = text_pool();
        let start = self.below((pool.len() - len) as u64) as usize;
        &pool[start..start + len]
    }
    /// Padding that brings a record of `current` bytes to about `average`.
    pub(super) fn extra(&mut self, current: usize, average: usize) -> &'static str {
        let delta = average.saturating_sub(current);
        if delta == 0 {
            return "";
        }
        let low = delta * 4 / 5;
        let len = low + self.below((delta * 6 / 5 - low + 1) as u64) as usize;
        self.text(len)
    }
}

pub(super) fn text_pool() -> &'static str {
    static POOL: OnceLock<String> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut r = Rng(0x5EED);
        (0..16_384)
            .map(|_| (b'a' + r.below(26) as u8) as char)
            .collect()
    })
}

/// `(channel, url)` for the 10 000 regular channels, built once.
pub(super) fn channels() -> &'static [(String, String)] {
    static CHANNELS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    CHANNELS.get_or_init(|| {
        let mut r = Rng(0xC4A77E1);
        (0..CHANNELS_NUMBER)
            .map(|i| {
                (
                    format!("channel-{i}"),
                    format!(
                        "https://www.nexmark.com/{}/item.htm?query=1&channel_id={i}",
                        r.text(5)
                    ),
                )
            })
            .collect()
    })
}

pub(super) fn hot_urls() -> &'static [String] {
    static URLS: OnceLock<Vec<String>> = OnceLock::new();
    URLS.get_or_init(|| {
        HOT_CHANNELS
            .iter()
            .map(|c| {
                format!(
                    "https://www.nexmark.com/{}/item.htm?query=1",
                    c.to_lowercase()
                )
            })
            .collect()
    })
}

pub(super) fn last_base0_person_id(idx: u64) -> i64 {
    let epoch = idx / TOTAL_PROPORTION;
    let offset = PERSON_PROPORTION - 1;
    (epoch * PERSON_PROPORTION + offset) as i64
}

pub(super) fn last_base0_auction_id(idx: u64) -> i64 {
    let mut epoch = (idx / TOTAL_PROPORTION) as i64;
    let mut offset = (idx % TOTAL_PROPORTION) as i64;
    let (p, a) = (PERSON_PROPORTION as i64, AUCTION_PROPORTION as i64);
    if offset < p {
        epoch -= 1;
        offset = a - 1;
    } else if offset >= p + a {
        offset = a - 1;
    } else {
        offset -= p;
    }
    (epoch * a + offset).max(0)
}

pub(super) fn next_base0_person_id(idx: u64, rng: &mut Rng) -> i64 {
    let people = last_base0_person_id(idx) + 1;
    let active = people.min(NUM_ACTIVE_PEOPLE);
    people - active + rng.below((active + PERSON_ID_LEAD) as u64) as i64
}

pub(super) fn next_base0_auction_id(idx: u64, rng: &mut Rng) -> i64 {
    let max = last_base0_auction_id(idx);
    let min = (max - NUM_IN_FLIGHT_AUCTIONS).max(0);
    min + rng.below((max - min + 1 + AUCTION_ID_LEAD) as u64) as i64
}
