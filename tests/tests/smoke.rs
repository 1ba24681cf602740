use dc_tests::{Cluster, Options};

#[tokio::test]
async fn smoke() {
    let c = Cluster::start(Options::default()).await.unwrap();
    c.post_ok(&[("1", "a"), ("2", "a")]).await.unwrap();
    assert_eq!(c.count("a").await.unwrap(), 2);
}
