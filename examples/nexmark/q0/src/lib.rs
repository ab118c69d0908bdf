//! Nexmark query 0, pass-through: every event goes out unchanged. It
//! measures the cost of reading, handing over and writing events (and, in
//! Weir, of crossing into the Wasm guest and back).
//!
//! The value is decoded so the query pays what any query pays to read an
//! event, as the reference implementations do.

weir_sdk::stateless!(|record, ctx| {
    weir_nexmark::Event::decode(record.value)?;
    ctx.emit(record.key, record.value);
    Ok(())
});
