//! Nexmark query 2, selection: the bids on every 123rd auction, as
//! (auction, price), both little-endian u64s (key and value).
//!
//! ```sql
//! SELECT auction, price FROM bid WHERE auction % 123 = 0;
//! ```

use weir_nexmark::Event;

weir_sdk::stateless!(|record, ctx| {
    if let Event::Bid(bid) = Event::decode(record.value)?
        && bid.auction % 123 == 0
    {
        ctx.emit(bid.auction.to_le_bytes(), bid.price.to_le_bytes());
    }
    Ok(())
});
