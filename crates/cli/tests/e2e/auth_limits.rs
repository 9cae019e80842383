//! Password logins under attack: failed attempts limited per account and
//! per source address, against a running controller.

use std::time::Duration;

use crate::auth::{FORM, Http, add_user, form_body, tenant_lab};

/// Failed logins are limited per account and per source address (429 with
/// `Retry-After`, before any password work), and the right password
/// still gets in once the wait is over: an attacker delays a user, never
/// locks them out. Prints what a guessing loop gets per second.
#[test]
fn hardening_logins_are_rate_limited_per_account_and_per_address() {
    let lab = tenant_lab(String::new(), String::new());
    let http = Http::new(format!("http://127.0.0.1:{}", lab.api));
    add_user(&lab, "ann", "operator", "correct horse battery", &[]);
    let login = |user: &str, pw: &str| {
        http.rt.block_on(async {
            let r = http
                .c
                .post(format!("{}/login", http.base))
                .header("content-type", FORM)
                .body(form_body(&[("username", user), ("password", pw)]))
                .send()
                .await
                .unwrap();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            (
                r.status().as_u16(),
                retry,
                r.headers().contains_key("set-cookie"),
            )
        })
    };
    // A guessing loop on one account, for a bounded time.
    let guess = |name: &dyn Fn(u32) -> String, secs: f64| {
        let start = std::time::Instant::now();
        let (mut answered, mut refused, mut i) = (0u32, 0u32, 0u32);
        while start.elapsed().as_secs_f64() < secs {
            match login(&name(i), "wrong password") {
                (303, None, false) => answered += 1,
                (429, Some(s), false) => {
                    assert!((1..=900).contains(&s), "Retry-After {s}");
                    refused += 1;
                }
                other => panic!("unexpected answer to a wrong password: {other:?}"),
            }
            i += 1;
        }
        let took = start.elapsed().as_secs_f64();
        (answered, refused, took)
    };
    let (answered, refused, took) = guess(&|_| "ann".into(), 4.0);
    println!(
        "per account: {answered} attempts answered, {refused} refused in {took:.1} s ({:.1} answered/s, {:.0} refused/s)",
        f64::from(answered) / took,
        f64::from(refused) / took
    );
    // 5 free failures, then waits of 1 s and 2 s: at most 8 in 4 s.
    assert!((5..=8).contains(&answered), "{answered} guesses answered");
    assert!(refused > 0);
    // The right password waits out the account's delay too, then gets in.
    let (status, retry, _) = login("ann", "correct horse battery");
    if status == 429 {
        std::thread::sleep(Duration::from_secs(retry.unwrap()));
    }
    let (status, _, cookie) = login("ann", "correct horse battery");
    assert_eq!(
        (status, cookie),
        (303, true),
        "the right password after the wait"
    );

    // One address guessing many names: ten free failures, then waits.
    let (answered, refused, took) = guess(&|i| format!("nobody{i}"), 4.0);
    println!(
        "per address: {answered} attempts answered, {refused} refused in {took:.1} s ({:.1} answered/s, {:.0} refused/s)",
        f64::from(answered) / took,
        f64::from(refused) / took
    );
    assert!((10..=13).contains(&answered), "{answered} guesses answered");
    let (status, retry, _) = login("ann", "correct horse battery");
    assert_eq!(status, 429, "the address waits, whatever the account");
    assert!(retry.is_some());
}
