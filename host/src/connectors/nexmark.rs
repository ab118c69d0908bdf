//! The `nexmark` source: the Nexmark benchmark's auction events (persons,
//! auctions, bids), generated as Apache Beam's and Flink's Nexmark
//! generators do, for `weir bench nexmark-*` and the Nexmark example jobs.
//!
//! Event `n` of `0..events` is, by `n % 50`, a person (0), an auction (1-3)
//! or a bid (4-49): the standard 1 : 3 : 46 proportions. Its event time is
//! `n / events_per_ms` ms. Everything else comes from a small PRNG seeded by
//! `n` alone, so any instance can generate any event and the events are the
//! same at every parallelism. Ids, sellers and bidders are drawn the way the
//! reference generator draws them: person and auction ids count up from
//! 1000 with the events; an auction's seller is, 3 times in 4, a "hot"
//! seller (the latest person id rounded down to a multiple of 100), else one
//! of the last 1000 persons (or up to 10 not yet registered); a bid goes, 1
//! time in 2, to a hot auction (the latest auction id rounded down to a
//! multiple of 100), else to one of the 100 auctions in flight (or up to 10
//! not yet opened), and comes, 3 times in 4, from a hot bidder. Prices are
//! `round(10^(6u) * 100)` cents for uniform `u`. Strings (names, emails,
//! cities, channels, urls) follow the reference's shapes; `extra` padding
//! fields are left out. Values are encoded by the `weir-nexmark` crate
//! (examples/nexmark/model), which the guest queries decode with.
//!
//! Record keys are 8-byte little-endian ids: a bid's auction, an auction's
//! id, a person's id. Splits, positions, rate limit and per-split event
//! times work as in the `generator` source: split `s` of `S` is
//! `n = s, s + S, s + 2S, ...`, its position the next `n` it will emit.

use weir_nexmark::{Auction, Bid, Event, Person};

use super::generator::{GeneratedSplits, Pacer};
use super::{ConnectorError, Poll, Source, SourceAssignment, SplitPosition};
use crate::runtime::batch::RecordBatch;

/// Out of every `TOTAL_PROPORTION` events, this many are persons...
pub const PERSON_PROPORTION: u64 = 1;
/// ...this many auctions...
pub const AUCTION_PROPORTION: u64 = 3;
/// ...and this many bids.
pub const BID_PROPORTION: u64 = 46;
pub const TOTAL_PROPORTION: u64 = PERSON_PROPORTION + AUCTION_PROPORTION + BID_PROPORTION;

pub const FIRST_PERSON_ID: u64 = 1000;
pub const FIRST_AUCTION_ID: u64 = 1000;
const FIRST_CATEGORY_ID: u64 = 10;
const NUM_CATEGORIES: u64 = 5;
const NUM_ACTIVE_PEOPLE: u64 = 1000;
const NUM_IN_FLIGHT_AUCTIONS: u64 = 100;
const PERSON_ID_LEAD: u64 = 10;
const AUCTION_ID_LEAD: u64 = 10;
/// Hot ids are the latest id rounded down to a multiple of these.
const HOT_AUCTION_RATIO: u64 = 100;
const HOT_SELLER_RATIO: u64 = 100;
const HOT_BIDDER_RATIO: u64 = 100;
/// A bid goes to a hot auction unless a draw below this is 0 (1 in 2)...
const HOT_AUCTIONS: u64 = 2;
/// ...and an auction has a hot seller, a bid a hot bidder, unless a draw
/// below these is 0 (1 in 4).
const HOT_SELLERS: u64 = 4;
const HOT_BIDDERS: u64 = 4;
const CHANNELS: u64 = 10_000;

const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];
const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const US_CITIES: [&str; 10] = [
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
const HOT_CHANNELS: [(&str, &str); 4] = [
    ("Google", "https://www.nexmark.com/google/item.htm?query=1"),
    (
        "Facebook",
        "https://www.nexmark.com/facebook/item.htm?query=1",
    ),
    ("Baidu", "https://www.nexmark.com/baidu/item.htm?query=1"),
    ("Apple", "https://www.nexmark.com/apple/item.htm?query=1"),
];

/// What kind of event number `n` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Person,
    Auction,
    Bid,
}

pub fn kind(n: u64) -> Kind {
    let rem = n % TOTAL_PROPORTION;
    if rem < PERSON_PROPORTION {
        Kind::Person
    } else if rem < PERSON_PROPORTION + AUCTION_PROPORTION {
        Kind::Auction
    } else {
        Kind::Bid
    }
}

/// The 0-based id of the last person registered at or before event `n`.
fn last_base0_person_id(n: u64) -> u64 {
    // With one person in each 50 events, the epoch's person comes first.
    (n / TOTAL_PROPORTION) * PERSON_PROPORTION
}

/// The 0-based id of the last auction opened at or before event `n` (for
/// the bids and auctions that ask: some auction is open by then).
fn last_base0_auction_id(n: u64) -> u64 {
    let epoch = n / TOTAL_PROPORTION;
    let offset = n % TOTAL_PROPORTION;
    if offset < PERSON_PROPORTION {
        // A person: the last auction is the previous epoch's last.
        return (epoch * AUCTION_PROPORTION).saturating_sub(1);
    }
    epoch * AUCTION_PROPORTION + (offset - PERSON_PROPORTION).min(AUCTION_PROPORTION - 1)
}

/// SplitMix64: a cheap PRNG, seeded per event.
struct Rng(u64);

impl Rng {
    fn for_event(n: u64) -> Self {
        Rng(n.wrapping_mul(0xA076_1D64_78BD_642F) ^ 0x6E78_6D61_726B_0001)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// A price in cents: `round(10^(6u) * 100)`.
    fn price(&mut self) -> u64 {
        (10f64.powf(self.unit() * 6.0) * 100.0).round() as u64
    }

    /// Appends 3 to `max_len - 1` letters with about one space in 13,
    /// without leading or trailing spaces.
    fn string(&mut self, max_len: u64, out: &mut String) {
        let start = out.len();
        for _ in 0..3 + self.below(max_len - 3) {
            let c = if self.below(13) == 0 {
                ' '
            } else {
                char::from(b'a' + self.below(26) as u8)
            };
            if c != ' ' || out.len() > start {
                out.push(c);
            }
        }
        out.truncate(out.trim_end().len());
    }

    /// A 0-based person id: one of the last `NUM_ACTIVE_PEOPLE`, or one of
    /// the next `PERSON_ID_LEAD` not yet registered.
    fn base0_person_id(&mut self, n: u64) -> u64 {
        let people = last_base0_person_id(n) + 1;
        let active = people.min(NUM_ACTIVE_PEOPLE);
        people - active + self.below(active + PERSON_ID_LEAD)
    }

    /// A 0-based auction id: one of the last `NUM_IN_FLIGHT_AUCTIONS`, or
    /// one of the next `AUCTION_ID_LEAD` not yet opened.
    fn base0_auction_id(&mut self, n: u64) -> u64 {
        let last = last_base0_auction_id(n);
        let min = last.saturating_sub(NUM_IN_FLIGHT_AUCTIONS);
        min + self.below(last - min + 1 + AUCTION_ID_LEAD)
    }
}

/// Generates Nexmark events by number; holds the buffers their strings are
/// built in, so an event borrows from its generator.
#[derive(Debug, Default)]
pub struct NexmarkGenerator {
    events_per_ms: u64,
    a: String,
    b: String,
    c: String,
}

impl NexmarkGenerator {
    pub fn new(events_per_ms: u64) -> Self {
        NexmarkGenerator {
            events_per_ms: events_per_ms.max(1),
            ..NexmarkGenerator::default()
        }
    }

    /// The event time of event `n` in ms.
    pub fn timestamp(&self, n: u64) -> i64 {
        (n / self.events_per_ms) as i64
    }

    /// Event number `n`.
    pub fn event(&mut self, n: u64) -> Event<'_> {
        let mut rng = Rng::for_event(n);
        let ts = self.timestamp(n);
        match kind(n) {
            Kind::Person => {
                let first = rng.pick(&FIRST_NAMES);
                let last = rng.pick(&LAST_NAMES);
                self.a.clear();
                self.a.push_str(first);
                self.a.push(' ');
                self.a.push_str(last);
                self.b.clear();
                rng.string(7, &mut self.b);
                self.b.push('@');
                rng.string(5, &mut self.b);
                self.b.push_str(".com");
                self.c.clear();
                for i in 0..4 {
                    use std::fmt::Write;
                    let sep = if i == 0 { "" } else { " " };
                    let _ = write!(self.c, "{sep}{:04}", rng.below(10_000));
                }
                Event::Person(Person {
                    id: last_base0_person_id(n) + FIRST_PERSON_ID,
                    name: &self.a,
                    email: &self.b,
                    credit_card: &self.c,
                    city: rng.pick(&US_CITIES),
                    state: rng.pick(&US_STATES),
                    date_time: ts,
                })
            }
            Kind::Auction => {
                let seller = if rng.below(HOT_SELLERS) > 0 {
                    (last_base0_person_id(n) / HOT_SELLER_RATIO) * HOT_SELLER_RATIO
                } else {
                    rng.base0_person_id(n)
                };
                let category = FIRST_CATEGORY_ID + rng.below(NUM_CATEGORIES);
                let initial_bid = rng.price();
                // Auctions stay open about as long as it takes to open the
                // next `NUM_IN_FLIGHT_AUCTIONS`, on average.
                let horizon = (NUM_IN_FLIGHT_AUCTIONS * TOTAL_PROPORTION
                    / AUCTION_PROPORTION
                    / self.events_per_ms) as i64;
                let expires = ts + 1 + rng.below((horizon * 2).max(1) as u64) as i64;
                self.a.clear();
                rng.string(20, &mut self.a);
                self.b.clear();
                rng.string(100, &mut self.b);
                let reserve = initial_bid + rng.price();
                Event::Auction(Auction {
                    id: last_base0_auction_id(n) + FIRST_AUCTION_ID,
                    item_name: &self.a,
                    description: &self.b,
                    initial_bid,
                    reserve,
                    date_time: ts,
                    expires,
                    seller: seller + FIRST_PERSON_ID,
                    category,
                })
            }
            Kind::Bid => {
                let auction = if rng.below(HOT_AUCTIONS) > 0 {
                    (last_base0_auction_id(n) / HOT_AUCTION_RATIO) * HOT_AUCTION_RATIO
                } else {
                    rng.base0_auction_id(n)
                };
                let bidder = if rng.below(HOT_BIDDERS) > 0 {
                    (last_base0_person_id(n) / HOT_BIDDER_RATIO) * HOT_BIDDER_RATIO + 1
                } else {
                    rng.base0_person_id(n)
                };
                let price = rng.price();
                let (channel, url) = if rng.below(2) > 0 {
                    rng.pick(&HOT_CHANNELS)
                } else {
                    use std::fmt::Write;
                    let c = rng.below(CHANNELS);
                    self.a.clear();
                    let _ = write!(self.a, "channel-{c}");
                    self.b.clear();
                    let _ = write!(
                        self.b,
                        "https://www.nexmark.com/channel-{c}/item.htm?query=1&channel_id={c}"
                    );
                    (self.a.as_str(), self.b.as_str())
                };
                Event::Bid(Bid {
                    auction: auction + FIRST_AUCTION_ID,
                    bidder: bidder + FIRST_PERSON_ID,
                    price,
                    channel,
                    url,
                    date_time: ts,
                })
            }
        }
    }
}

/// The record key of an event: a bid's auction, an auction's or a person's id.
pub fn record_key(event: &Event<'_>) -> u64 {
    match event {
        Event::Person(p) => p.id,
        Event::Auction(a) => a.id,
        Event::Bid(b) => b.auction,
    }
}

pub struct NexmarkSource {
    splits: GeneratedSplits,
    generator: NexmarkGenerator,
    value: Vec<u8>,
    /// Events per second at most, and the pacing clock.
    rate: Option<Pacer>,
}

impl NexmarkSource {
    pub fn new(events: u64, events_per_ms: u64, assignment: &SourceAssignment) -> Self {
        NexmarkSource {
            splits: GeneratedSplits::new(assignment, events),
            generator: NexmarkGenerator::new(events_per_ms),
            value: Vec::with_capacity(256),
            rate: None,
        }
    }

    /// Paces the source to at most `rate` events per second.
    pub fn with_rate(mut self, rate: Option<u64>) -> Self {
        self.rate = rate.map(Pacer::new);
        self
    }

    /// Sleeps until `max` more events are due; returns how many may go now.
    fn pace(&mut self, max: usize) -> usize {
        self.rate.as_mut().map_or(max, |p| p.allow(max))
    }
}

impl Source for NexmarkSource {
    fn slowest_split_timestamp(&self) -> Option<i64> {
        self.splits.slowest_timestamp()
    }

    fn positions(&self) -> Option<Vec<SplitPosition>> {
        Some(self.splits.positions())
    }

    fn poll(&mut self, out: &mut RecordBatch, max: usize) -> Result<Poll, ConnectorError> {
        let max = self.pace(max);
        for _ in 0..max {
            let generator = &self.generator;
            let Some((n, ts)) = self.splits.next(|n| generator.timestamp(n)) else {
                return Ok(Poll::End);
            };
            let event = self.generator.event(n);
            let key = record_key(&event);
            self.value.clear();
            event.encode(&mut self.value);
            out.push(&key.to_le_bytes(), &self.value, ts);
        }
        Ok(self.splits.poll_result())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(events: u64, instance: u32, parallelism: u32) -> Vec<(Vec<u8>, Vec<u8>, i64)> {
        let mut s = NexmarkSource::new(events, 1, &SourceAssignment::fresh(instance, parallelism));
        let mut b = RecordBatch::new();
        while s.poll(&mut b, 100).unwrap() == Poll::More {}
        b.iter()
            .map(|r| (r.key.to_vec(), r.value.to_vec(), r.timestamp))
            .collect()
    }

    #[test]
    fn one_person_three_auctions_and_forty_six_bids_in_fifty() {
        let mut g = NexmarkGenerator::new(1);
        let mut counts = [0u64; 3];
        for n in 0..50_000 {
            let i = match g.event(n) {
                Event::Person(_) => 0,
                Event::Auction(_) => 1,
                Event::Bid(_) => 2,
            };
            counts[i] += 1;
        }
        assert_eq!(counts, [1000, 3000, 46_000]);
    }

    #[test]
    fn ids_count_up_and_refer_to_recent_persons_and_auctions() {
        let mut g = NexmarkGenerator::new(1);
        let (mut persons, mut auctions) = (0u64, 0u64);
        let mut hot_bids = 0;
        let mut bids = 0;
        for n in 0..100_000 {
            match g.event(n) {
                Event::Person(p) => {
                    assert_eq!(p.id, FIRST_PERSON_ID + persons);
                    persons += 1;
                }
                Event::Auction(a) => {
                    assert_eq!(a.id, FIRST_AUCTION_ID + auctions);
                    auctions += 1;
                    assert!(a.seller < FIRST_PERSON_ID + persons + PERSON_ID_LEAD);
                    assert!(a.reserve >= a.initial_bid && a.expires > a.date_time);
                    assert!((10..15).contains(&a.category));
                }
                Event::Bid(b) => {
                    bids += 1;
                    let last = FIRST_AUCTION_ID + auctions - 1;
                    assert!(b.auction <= last + AUCTION_ID_LEAD, "{b:?}");
                    assert!(b.auction + NUM_IN_FLIGHT_AUCTIONS + HOT_AUCTION_RATIO > last);
                    if b.auction == (last - FIRST_AUCTION_ID) / 100 * 100 + FIRST_AUCTION_ID {
                        hot_bids += 1;
                    }
                    assert!(b.bidder < FIRST_PERSON_ID + persons + PERSON_ID_LEAD);
                }
            }
        }
        // About half the bids go to the hot auction.
        assert!(
            hot_bids * 10 > bids * 4 && hot_bids * 10 < bids * 6,
            "{hot_bids} of {bids}"
        );
    }

    #[test]
    fn events_are_the_same_at_any_parallelism_and_deterministic() {
        let one = drain(5_000, 0, 1);
        assert_eq!(one.len(), 5_000);
        let mut g = NexmarkGenerator::new(1);
        for (n, (key, value, ts)) in one.iter().enumerate() {
            let e = g.event(n as u64);
            assert_eq!(*value, e.to_bytes());
            assert_eq!(*key, record_key(&e).to_le_bytes());
            assert_eq!(*ts, n as i64);
            assert_eq!(Event::decode(value).unwrap(), e);
        }
        let mut three: Vec<_> = (0..3).flat_map(|k| drain(5_000, k, 3)).collect();
        let mut sorted_one = one.clone();
        three.sort();
        sorted_one.sort();
        assert_eq!(three, sorted_one);
    }

    #[test]
    fn resumes_from_positions() {
        let mut s = NexmarkSource::new(1_000, 1, &SourceAssignment::fresh(0, 2));
        let mut b = RecordBatch::new();
        s.poll(&mut b, 7).unwrap();
        let positions = s.positions().unwrap();
        assert_eq!(positions[0].offset, 14);
        let restored = SourceAssignment {
            instance: 0,
            parallelism: 1,
            restored: Some(crate::connectors::RestoredSplits {
                split_count: 2,
                positions,
            }),
        };
        let mut r = NexmarkSource::new(1_000, 1, &restored);
        let mut b = RecordBatch::new();
        r.poll(&mut b, 1).unwrap();
        let first = b.iter().next().unwrap();
        assert_eq!(first.timestamp, 14);
    }
}
