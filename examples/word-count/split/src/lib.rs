//! Splits a line of text into lowercase words and re-keys by word: each word
//! goes out as (word, "1"), so the next keyed step counts per word.

weir_sdk::stateless!(|record, ctx| {
    let line = record.value_str()?;
    for word in line
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        ctx.emit(word.to_lowercase(), "1");
    }
    Ok(())
});
