//! Nexmark query 1, currency conversion: every bid, its price converted
//! from dollars to euros (`price * 908 / 1000`).
//!
//! ```sql
//! SELECT auction, bidder, 0.908 * price AS price, date_time FROM bid;
//! ```

use weir_nexmark::{Bid, Event};

weir_sdk::stateless!(|record, ctx| {
    if let Event::Bid(bid) = Event::decode(record.value)? {
        let euros = Bid {
            price: bid.price * 908 / 1000,
            ..bid
        };
        ctx.emit(record.key, euros.to_bytes());
    }
    Ok(())
});
