//! Arrow builders for people, auctions and bids: one row per event, or a
//! null placeholder row in the combined `events` layout.

use std::fmt::Write as _;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Builder, StringBuilder, TimestampMillisecondBuilder};

use super::model::*;

pub(super) struct PersonColumns {
    id: Int64Builder,
    name: StringBuilder,
    email: StringBuilder,
    card: StringBuilder,
    city: StringBuilder,
    state: StringBuilder,
    date_time: TimestampMillisecondBuilder,
    extra: StringBuilder,
}

impl PersonColumns {
    pub(super) fn with_capacity(n: usize) -> Self {
        Self {
            id: Int64Builder::with_capacity(n),
            name: StringBuilder::with_capacity(n, n * 12),
            email: StringBuilder::with_capacity(n, n * 16),
            card: StringBuilder::with_capacity(n, n * 19),
            city: StringBuilder::with_capacity(n, n * 8),
            state: StringBuilder::with_capacity(n, n * 2),
            date_time: TimestampMillisecondBuilder::with_capacity(n),
            extra: StringBuilder::with_capacity(n, n * 100),
        }
    }
    pub(super) fn push(&mut self, idx: u64, ts: i64, rng: &mut Rng) {
        self.id
            .append_value(last_base0_person_id(idx) + FIRST_PERSON_ID);
        let first = FIRST_NAMES[rng.below(FIRST_NAMES.len() as u64) as usize];
        let last = LAST_NAMES[rng.below(LAST_NAMES.len() as u64) as usize];
        let _ = write!(self.name, "{first} {last}");
        self.name.append_value("");
        let _ = write!(self.email, "{}@{}.com", rng.text(7), rng.text(5));
        self.email.append_value("");
        let (a, b, c, d) = (
            rng.below(10_000),
            rng.below(10_000),
            rng.below(10_000),
            rng.below(10_000),
        );
        let _ = write!(self.card, "{a:04} {b:04} {c:04} {d:04}");
        self.card.append_value("");
        let city = US_CITIES[rng.below(US_CITIES.len() as u64) as usize];
        self.city.append_value(city);
        self.state
            .append_value(US_STATES[rng.below(US_STATES.len() as u64) as usize]);
        self.date_time.append_value(ts);
        self.extra.append_value(rng.extra(
            8 + first.len() + last.len() + 14 + 19 + city.len() + 2 + 8,
            AVG_PERSON_BYTES,
        ));
    }
    pub(super) fn push_null(&mut self) {
        self.id.append_value(0);
        self.name.append_value("");
        self.email.append_value("");
        self.card.append_value("");
        self.city.append_value("");
        self.state.append_value("");
        self.date_time.append_value(0);
        self.extra.append_value("");
    }
    pub(super) fn finish(mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.id.finish()),
            Arc::new(self.name.finish()),
            Arc::new(self.email.finish()),
            Arc::new(self.card.finish()),
            Arc::new(self.city.finish()),
            Arc::new(self.state.finish()),
            Arc::new(self.date_time.finish()),
            Arc::new(self.extra.finish()),
        ]
    }
}

pub(super) struct AuctionColumns {
    id: Int64Builder,
    item_name: StringBuilder,
    description: StringBuilder,
    initial_bid: Int64Builder,
    reserve: Int64Builder,
    date_time: TimestampMillisecondBuilder,
    expires: TimestampMillisecondBuilder,
    seller: Int64Builder,
    category: Int64Builder,
    extra: StringBuilder,
}

impl AuctionColumns {
    pub(super) fn with_capacity(n: usize) -> Self {
        Self {
            id: Int64Builder::with_capacity(n),
            item_name: StringBuilder::with_capacity(n, n * 20),
            description: StringBuilder::with_capacity(n, n * 100),
            initial_bid: Int64Builder::with_capacity(n),
            reserve: Int64Builder::with_capacity(n),
            date_time: TimestampMillisecondBuilder::with_capacity(n),
            expires: TimestampMillisecondBuilder::with_capacity(n),
            seller: Int64Builder::with_capacity(n),
            category: Int64Builder::with_capacity(n),
            extra: StringBuilder::with_capacity(n, n * 300),
        }
    }
    pub(super) fn push(&mut self, idx: u64, ts: i64, avg_len_ms: i64, rng: &mut Rng) {
        self.id
            .append_value(last_base0_auction_id(idx) + FIRST_AUCTION_ID);
        let name_len = 5 + rng.below(16) as usize;
        self.item_name.append_value(rng.text(name_len));
        let desc_len = 20 + rng.below(81) as usize;
        self.description.append_value(rng.text(desc_len));
        let initial = rng.price();
        self.initial_bid.append_value(initial);
        self.reserve.append_value(initial + rng.price());
        self.date_time.append_value(ts);
        self.expires
            .append_value(ts + 1 + rng.below((2 * avg_len_ms) as u64) as i64);
        let seller = if rng.below(HOT_SELLER_RATIO as u64) > 0 {
            (last_base0_person_id(idx) / HOT_SELLER_RATIO) * HOT_SELLER_RATIO
        } else {
            next_base0_person_id(idx, rng)
        };
        self.seller.append_value(seller + FIRST_PERSON_ID);
        self.category
            .append_value(FIRST_CATEGORY_ID + rng.below(NUM_CATEGORIES) as i64);
        self.extra
            .append_value(rng.extra(name_len + desc_len + 8 * 7, AVG_AUCTION_BYTES));
    }
    pub(super) fn push_null(&mut self) {
        self.id.append_value(0);
        self.item_name.append_value("");
        self.description.append_value("");
        self.initial_bid.append_value(0);
        self.reserve.append_value(0);
        self.date_time.append_value(0);
        self.expires.append_value(0);
        self.seller.append_value(0);
        self.category.append_value(0);
        self.extra.append_value("");
    }
    pub(super) fn finish(mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.id.finish()),
            Arc::new(self.item_name.finish()),
            Arc::new(self.description.finish()),
            Arc::new(self.initial_bid.finish()),
            Arc::new(self.reserve.finish()),
            Arc::new(self.date_time.finish()),
            Arc::new(self.expires.finish()),
            Arc::new(self.seller.finish()),
            Arc::new(self.category.finish()),
            Arc::new(self.extra.finish()),
        ]
    }
}

pub(super) struct BidColumns {
    auction: Int64Builder,
    bidder: Int64Builder,
    price: Int64Builder,
    channel: StringBuilder,
    url: StringBuilder,
    date_time: TimestampMillisecondBuilder,
    extra: StringBuilder,
}

impl BidColumns {
    pub(super) fn with_capacity(n: usize) -> Self {
        Self {
            auction: Int64Builder::with_capacity(n),
            bidder: Int64Builder::with_capacity(n),
            price: Int64Builder::with_capacity(n),
            channel: StringBuilder::with_capacity(n, n * 10),
            url: StringBuilder::with_capacity(n, n * 60),
            date_time: TimestampMillisecondBuilder::with_capacity(n),
            extra: StringBuilder::with_capacity(n, n * 30),
        }
    }
    pub(super) fn push(&mut self, idx: u64, ts: i64, rng: &mut Rng) {
        let auction = if rng.below(HOT_AUCTION_RATIO as u64) > 0 {
            (last_base0_auction_id(idx) / HOT_AUCTION_RATIO) * HOT_AUCTION_RATIO
        } else {
            next_base0_auction_id(idx, rng)
        };
        self.auction.append_value(auction + FIRST_AUCTION_ID);
        let bidder = if rng.below(HOT_BIDDER_RATIO as u64) > 0 {
            (last_base0_person_id(idx) / HOT_BIDDER_RATIO) * HOT_BIDDER_RATIO + 1
        } else {
            next_base0_person_id(idx, rng)
        };
        self.bidder.append_value(bidder + FIRST_PERSON_ID);
        self.price.append_value(rng.price());
        let (channel, url) = if rng.below(HOT_CHANNELS_RATIO) > 0 {
            let i = rng.below(HOT_CHANNELS.len() as u64) as usize;
            (HOT_CHANNELS[i], hot_urls()[i].as_str())
        } else {
            let (c, u) = &channels()[rng.below(CHANNELS_NUMBER) as usize];
            (c.as_str(), u.as_str())
        };
        self.channel.append_value(channel);
        self.url.append_value(url);
        self.date_time.append_value(ts);
        self.extra
            .append_value(rng.extra(32 + channel.len() + url.len(), AVG_BID_BYTES));
    }
    pub(super) fn push_null(&mut self) {
        self.auction.append_value(0);
        self.bidder.append_value(0);
        self.price.append_value(0);
        self.channel.append_value("");
        self.url.append_value("");
        self.date_time.append_value(0);
        self.extra.append_value("");
    }
    pub(super) fn finish(mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.auction.finish()),
            Arc::new(self.bidder.finish()),
            Arc::new(self.price.finish()),
            Arc::new(self.channel.finish()),
            Arc::new(self.url.finish()),
            Arc::new(self.date_time.finish()),
            Arc::new(self.extra.finish()),
        ]
    }
}
