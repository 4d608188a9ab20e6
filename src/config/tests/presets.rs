//! `[[sinks]] type = "webhook"` with a `preset`: its keys, defaults and channel names.

use super::*;
use crate::sink::webhook::{Format, WebhookSinkConfig};

fn preset(sink: &str) -> String {
    hook(sink)
}

fn resolved(text: &str) -> WebhookSinkConfig {
    match ok(text).sinks.pop() {
        Some(SinkConfig::Webhook(c)) => *c,
        other => panic!("expected a webhook sink, got {other:?}"),
    }
}

#[test]
fn each_preset_takes_its_keys_and_defaults() {
    let c = resolved(&preset("preset = \"ably\"\nkey = \"app.key:SECRET\""));
    assert_eq!(c.url.as_str(), "https://main.realtime.ably.net/");
    assert!(matches!(c.format, Format::Ably { .. }));
    assert_eq!(c.channels, ["resources/products"]);
    assert!(!format!("{c:?}").contains("SECRET"), "the key is not shown");

    let c = resolved(&preset(
        "preset = \"centrifugo\"\nurl = \"http://127.0.0.1:8000\"\nkey = \"k\"",
    ));
    match &c.format {
        Format::Centrifugo { channels, .. } => {
            assert_eq!(channels.map("resources/products"), "resources:products")
        }
        other => panic!("{other:?}"),
    }

    let c = resolved(&preset(
        "preset = \"pusher\"\ncluster = \"eu\"\napp_id = \"42\"\nkey = \"abc\"\nsecret = \"SECRET\"\n\
         channel_prefix = \"private-\"\nbatch_max_events = 10",
    ));
    assert_eq!(c.url.as_str(), "https://api-eu.pusher.com/");
    match &c.format {
        Format::Pusher(p) => {
            assert_eq!(
                p.channels.map("resources/products"),
                "private-resources-products"
            );
            assert_eq!((p.app_id.as_str(), p.key.as_str()), ("42", "abc"));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        !format!("{c:?}").contains("SECRET"),
        "the secret is not shown"
    );
}

#[test]
fn preset_problems_name_their_keys() {
    let list = issues(&preset(&format!(
        "preset = \"ably\"\nkey = \"app.key:s\"\nsecret = \"{WHSEC}\"\nheaders = {{ A = \"b\" }}"
    )));
    assert_eq!(
        keys(&list),
        ["sinks[1].secret", "sinks[1].headers"],
        "{list:#?}"
    );
    assert!(list[0].message.contains("preset \"ably\""), "{list:#?}");

    let list = issues(&preset(
        "preset = \"centrifugo\"\nkey_file = \"/nonexistent/k\"",
    ));
    assert_eq!(
        keys(&list),
        ["sinks[1].url", "sinks[1].key_file"],
        "{list:#?}"
    );

    let list = issues(&preset(
        "preset = \"pusher\"\napp_id = \"x1\"\nkey = \"abc\"\nbatch_max_events = 11\nkey_file = \"/k\"",
    ));
    assert_eq!(
        keys(&list),
        [
            "sinks[1].key_file",
            "sinks[1].cluster",
            "sinks[1].app_id",
            "sinks[1].secret",
            "sinks[1].batch_max_events"
        ],
        "{list:#?}"
    );

    let issue = only_issue(&preset("preset = \"fanout\""), "sinks[1].preset");
    assert!(issue.message.contains("centrifugo"), "{issue}");
    let issue = only_issue(
        &preset("preset = \"ably\"\nkey = \"SECRETKEY\""),
        "sinks[1].key",
    );
    assert!(!issue.message.contains("SECRETKEY"), "{issue}");
}

#[test]
fn mapped_channels_must_suit_the_relay() {
    let issue = only_issue(
        &preset(
            "preset = \"pusher\"\ncluster = \"eu\"\napp_id = \"1\"\nkey = \"k\"\nsecret = \"s\"\n\
             channel_separator = \"/\"",
        ),
        "sinks[1].channel_separator",
    );
    assert!(
        issue.message.contains("public.products") && issue.message.contains("resources/products"),
        "{issue}"
    );
    let issue = only_issue(
        &preset(
            "preset = \"centrifugo\"\nurl = \"http://c\"\nkey = \"k\"\nchannel_separator = \"#\"",
        ),
        "sinks[1].channel_separator",
    );
    assert!(issue.message.contains("Centrifugo"), "{issue}");
}

#[test]
fn with_channel_templates_a_separator_values_may_hold_is_refused() {
    let text = |separator: &str| {
        format!(
            "[postgres]\nurl = \"{URL}\"\n[[tables]]\nname = \"products\"\nchannel = \"tenants/{{org}}/products\"\n\
             [[sinks]]\ntype = \"webhook\"\npreset = \"pusher\"\ncluster = \"eu\"\napp_id = \"1\"\nkey = \"k\"\nsecret = \"s\"\n{separator}\n"
        )
    };
    // Pusher's default `-`: `tenants/7-admin/products` and `tenants/7/admin/products`… would meet.
    let issue = only_issue(&text(""), "sinks[0].channel_separator");
    assert!(issue.message.contains("two tenants"), "{issue}");
    let c = ok(&text("channel_separator = \".\""));
    match c.sinks.first() {
        Some(SinkConfig::Webhook(w)) => match &w.format {
            Format::Pusher(p) => assert_eq!(
                p.channels.map("tenants/a=2Eb/products"),
                "tenants.a=2Eb.products"
            ),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}
