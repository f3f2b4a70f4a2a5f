//! Unit tests of the configuration: defaults, validation, env overrides, redaction.

use super::*;

fn valid() -> Config {
    let mut c = Config::default();
    c.auth.jwt_secret = "x".repeat(32);
    c
}

#[test]
fn defaults_need_only_a_secret() {
    assert!(Config::default().validate().is_ok());
    assert!(Config::default().validate_for_serving().is_err());
    assert!(valid().validate_for_serving().is_ok());
}

/// `valid()` changed by `change`, validated; the error as text.
fn validated(change: impl FnOnce(&mut Config)) -> Result<(), String> {
    let mut c = valid();
    change(&mut c);
    c.validate().map(|_| ()).map_err(|e| e.to_string())
}

#[test]
fn bad_values_are_refused() {
    assert!(validated(|c| c.read_side.shards = 0).is_err());
    assert!(validated(|c| c.auth.max_token_ttl_secs = 0).is_err());
    assert!(validated(|c| c.database.url = "mysql://nope".into()).is_err());
    assert!(validated(|c| c.projector.max_attempts = 0).is_err());
    assert!(validated(|c| c.database.read_pool_size = 0).is_err());
    assert!(validated(|c| c.cdc.watermark_ms = 4).is_err());
    assert!(validated(|c| c.cdc.linger_ms = 0).is_ok());
    assert!(validated(|c| c.cdc.linger_ms = 1000).is_ok());
    assert!(validated(|c| c.cdc.linger_ms = 1001).is_err());
    let e = validated(|c| c.projector.batch_wait_ms = u64::MAX);
    assert!(
        e.as_ref()
            .is_err_and(|e| e.contains("projector.batch_wait_ms must be at most")),
        "{e:?}"
    );
    assert!(
        validated(|c| c.projector.batch_max = 1_000_001).is_err(),
        "a batch is held in memory"
    );
    assert!(validated(|c| c.projector.outbox_batch = 1_000_001).is_err());
    assert!(validated(|c| c.audit.recheck_ms = 3_600_001).is_err());
    let e = validated(|c| c.audit.max_repairs = 0);
    assert!(
        e.as_ref()
            .is_err_and(|e| e.contains("audit.max_repairs must be between 1 and 1000000")),
        "{e:?}"
    );
    assert!(validated(|c| c.audit.max_repairs = 1_000_001).is_err());
    assert!(validated(|c| c.audit.max_repairs = 1_000_000).is_ok());
    assert!(
        validated(|c| c.projector.batch_wait_ms = 0).is_ok(),
        "0 applies what has arrived"
    );
    let e = validated(|c| c.projector.visibility_wait_ms = 99);
    assert!(
        e.as_ref()
            .is_err_and(|e| e.contains("projector.visibility_wait_ms must be at least 100")),
        "{e:?}"
    );
    assert!(validated(|c| c.projector.visibility_wait_ms = 240_001).is_err());
    assert!(validated(|c| c.projector.visibility_wait_ms = 240_000).is_ok());
    assert!(validated(|c| c.projector.visibility_wait_ms = 100).is_ok());
    assert!(validated(|c| c.projector.max_read_waiters = 0).is_ok());
    let e = validated(|c| c.projector.max_read_waiters = MAX_READ_WAITERS + 1);
    assert!(
        e.as_ref()
            .is_err_and(|e| e.contains("projector.max_read_waiters must be at most")),
        "{e:?}"
    );
}

/// Each group reads the topics of the tables its view depends on; reads wait on those only.
#[test]
fn groups_read_the_topics_of_their_views() {
    use hermet_core::projection::ReadModels;
    let mut c = valid();
    c.cdc.partitions = 3;
    c.cdc.tables = vec![
        "public.users".into(),
        "messages".into(),
        "friendships".into(),
    ];
    c.projector.group_prefix = "t-".into();
    let all = c.data_topics().map_err(|e| e.to_string());
    assert_eq!(
        all,
        Ok(vec![
            "users.changed".to_owned(),
            "messages.changed".to_owned(),
            "friendships.changed".to_owned()
        ])
    );
    assert_eq!(
        c.group_topics(ReadModels::CONVERSATIONS)
            .map_err(|e| e.to_string()),
        all
    );
    let cov = c
        .coverage("contact-view-updater", ReadModels::CONTACTS)
        .map_err(|e| e.to_string());
    assert_eq!(
        cov,
        Ok(hermet_store::sync::Coverage {
            projector: "t-contact-view-updater".into(),
            topics: vec!["users.changed".into(), "friendships.changed".into()],
            partitions: 6,
        })
    );
}

#[test]
fn passwords_are_redacted() {
    let cases = [
        (
            "postgres://hermet:s3cret@db.internal:5432/hermet",
            "postgres://hermet:***@db.internal:5432/hermet",
        ),
        // An unescaped `@` in the password.
        ("postgres://u:p@ss@h/db", "postgres://u:***@h/db"),
        (
            "postgres://postgres@127.0.0.1:55432/hermet",
            "postgres://postgres@127.0.0.1:55432/hermet",
        ),
        (
            "postgres://u@h/db?sslmode=require&password=s3cret",
            "postgres://u@h/db?sslmode=require&password=***",
        ),
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("rediss://user:s3cret@cache", "rediss://user:***@cache"),
        ("redis://127.0.0.1:56379", "redis://127.0.0.1:56379"),
        (
            "host=db user=u password=s3cret dbname=x",
            "host=db user=u password=*** dbname=x",
        ),
        (
            "host=db password = 'se cr\\'et' port=5",
            "host=db password=*** port=5",
        ),
        (
            "host=db password='unterminated",
            "<connection string not shown>",
        ),
    ];
    for (url, shown) in cases {
        assert_eq!(redact(url), shown, "{url}");
    }
}

/// `hermet config` prints the configuration's `Debug`: no password in it.
#[test]
fn printed_configuration_has_no_passwords() {
    let mut c = valid();
    c.database.url = "postgres://hermet:db-s3cret@db:5432/hermet".into();
    c.redis.url = "redis://:redis-s3cret@cache:6379".into();
    c.kafka.brokers = "SASL_SSL://app:kafka-s3cret@k1:9093,k2:9093".into();
    let shown = format!("{c:#?}");
    assert!(
        shown.contains("postgres://hermet:***@db:5432/hermet"),
        "{shown}"
    );
    assert!(shown.contains("redis://:***@cache:6379"), "{shown}");
    assert!(
        shown.contains("SASL_SSL://app:***@k1:9093,k2:9093"),
        "{shown}"
    );
    assert!(shown.contains("rate_limits: RateLimitsConfig"), "{shown}");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(!shown.contains(&c.auth.jwt_secret), "{shown}");
}

#[test]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
fn file_and_environment() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "hermet.toml",
            "[read_side]\nshards = 8\n[http]\naddr = \"127.0.0.1:9000\"\n",
        )?;
        jail.set_env("HERMET_JWT_SECRET", "s".repeat(40));
        jail.set_env("HERMET_HTTP__ADDR", "127.0.0.1:9100");
        jail.set_env("HERMET_DATABASE_URL", "postgres://u@h:1/db");
        jail.set_env("HERMET_DATABASE__READ_POOL_SIZE", "3");
        jail.set_env("HERMET_AUDIT__REPAIR", "false");
        jail.set_env("HERMET_AUDIT__MAX_REPAIRS", "25");
        let c = Config::load(Some(Path::new("hermet.toml"))).map_err(|e| e.to_string())?;
        assert!(!c.auth.open_signup, "open sign-up is off unless asked for");
        jail.set_env("HERMET_AUTH__OPEN_SIGNUP", "true");
        jail.set_env("HERMET_AUTH__MAX_TOKEN_TTL_SECS", "3600");
        let c = Config::load(Some(Path::new("hermet.toml"))).map_err(|e| e.to_string())?;
        assert!(c.auth.open_signup);
        assert_eq!(c.auth.max_token_ttl_secs, 3600);
        assert_eq!(c.database.read_pool_size, 3);
        assert!(
            !c.audit.repair,
            "the background audit's repair can be turned off"
        );
        assert_eq!(c.audit.max_repairs, 25);
        assert_eq!(c.read_side.shards, 8);
        assert_eq!(c.http.addr.port(), 9100, "env wins over the file");
        assert_eq!(c.database.url, "postgres://u@h:1/db");
        jail.set_env("HERMET_READ_SIDE__SHARDZ", "3");
        assert!(Config::load(None).is_err(), "unknown keys are refused");
        Ok(())
    });
}

#[test]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
fn the_shutdown_deadline_is_set_and_bounded() {
    assert_eq!(
        valid().shutdown.deadline(),
        std::time::Duration::from_secs(25)
    );
    let e = validated(|c| c.shutdown.deadline_secs = 0);
    assert!(
        e.as_ref()
            .is_err_and(|e| e.contains("shutdown.deadline_secs must be between 1 and 3600")),
        "{e:?}"
    );
    assert!(validated(|c| c.shutdown.deadline_secs = 3601).is_err());
    figment::Jail::expect_with(|jail| {
        jail.set_env("HERMET_SHUTDOWN__DEADLINE_SECS", "7");
        let c = Config::load(None).map_err(|e| e.to_string())?;
        assert_eq!(c.shutdown.deadline(), std::time::Duration::from_secs(7));
        Ok(())
    });
}

#[test]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
fn rate_limits_are_validated_and_can_be_turned_off() {
    use hermet_api::Limit;
    let d = valid().rate_limits;
    assert!(d.enabled);
    assert_eq!((d.send, d.write), (Limit::new(20, 50), Limit::new(50, 100)));
    assert_eq!(d.api().signup, Limit::new(1, 20));
    let e = validated(|c| c.rate_limits.send = Limit::new(10, 0));
    assert!(
        e.as_ref()
            .is_err_and(|e| e.contains("rate_limits.send: burst must be at least 1")),
        "{e:?}"
    );
    let e = validated(|c| {
        c.rate_limits.enabled = false;
        c.rate_limits.auth_failure = Limit::new(1, 0);
    });
    assert!(
        e.as_ref()
            .is_err_and(|e| e.contains("rate_limits.auth_failure")),
        "checked while off too: {e:?}"
    );
    assert!(
        validated(|c| c.rate_limits.signup = Limit::new(0, 0)).is_ok(),
        "0: off"
    );
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "hermet.toml",
            "[rate_limits]\nsignup = { per_second = 2, burst = 3 }\ntrusted_proxies = [\"10.0.0.0/8\"]\n",
        )?;
        jail.set_env("HERMET_RATE_LIMITS__SEND__PER_SECOND", "7");
        jail.set_env("HERMET_RATE_LIMITS__SEND__BURST", "9");
        let c = Config::load(Some(Path::new("hermet.toml"))).map_err(|e| e.to_string())?;
        let api = c.rate_limits.api();
        assert_eq!((api.signup, api.send), (Limit::new(2, 3), Limit::new(7, 9)));
        assert_eq!(
            api.write,
            Limit::new(50, 100),
            "the rest keep their defaults"
        );
        assert_eq!(api.trusted_proxies, vec!["10.0.0.0/8".parse().unwrap()]);
        jail.set_env("HERMET_RATE_LIMITS__ENABLED", "false");
        let c = Config::load(Some(Path::new("hermet.toml"))).map_err(|e| e.to_string())?;
        let api = c.rate_limits.api();
        assert!(api.each().iter().all(|(_, l)| !l.is_on()), "all off");
        jail.set_env("HERMET_RATE_LIMITS__SEND__BURST", "0");
        assert!(Config::load(None).is_err(), "burst 0 refused at start-up");
        jail.create_file(
            "bad.toml",
            "[rate_limits]\ntrusted_proxies = [\"10.0.0.0/40\"]\n",
        )?;
        assert!(Config::load(Some(Path::new("bad.toml"))).is_err());
        Ok(())
    });
}

#[test]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
fn the_identity_provider_key_set_is_read_and_validated() {
    assert!(valid().auth.jwks.is_none(), "off unless configured");
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "hermet.toml",
            "[auth.jwks]\nsource = \"https://idp.example.com/.well-known/jwks.json\"\n\
             issuer = \"https://idp.example.com/\"\naudience = [\"hermet\", \"chat\"]\n",
        )?;
        let c = Config::load(Some(Path::new("hermet.toml"))).map_err(|e| e.to_string())?;
        let jwks = c.auth.jwks.as_ref().ok_or("no [auth.jwks]")?;
        assert_eq!(jwks.audience.as_slice(), ["hermet", "chat"]);
        assert_eq!(jwks.algorithms, ["RS256", "ES256", "EdDSA"]);
        assert_eq!(jwks.refresh_min_interval_secs, 60);
        assert!(!jwks.create_users);
        jail.set_env("HERMET_AUTH__JWKS__AUDIENCE", "solo");
        jail.set_env("HERMET_AUTH__JWKS__CREATE_USERS", "true");
        let c = Config::load(Some(Path::new("hermet.toml"))).map_err(|e| e.to_string())?;
        let jwks = c.auth.jwks.as_ref().ok_or("no [auth.jwks]")?;
        assert_eq!(jwks.audience.as_slice(), ["solo"]);
        assert!(jwks.create_users);

        jail.create_file(
            "hs.toml",
            "[auth.jwks]\nsource = \"/etc/jwks.json\"\nissuer = \"i\"\naudience = \"a\"\n\
             algorithms = [\"RS256\", \"HS256\"]\n",
        )?;
        let e = Config::load(Some(Path::new("hs.toml")))
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert!(
            e.as_ref()
                .is_err_and(|e| e.contains("HS256 is a shared-secret algorithm")),
            "{e:?}"
        );
        jail.create_file(
            "typo.toml",
            "[auth.jwks]\nsource = \"/etc/jwks.json\"\nissuer = \"i\"\naudience = \"a\"\n\
             leeway = 5\n",
        )?;
        assert!(
            Config::load(Some(Path::new("typo.toml"))).is_err(),
            "unknown keys are refused"
        );
        Ok(())
    });
}
