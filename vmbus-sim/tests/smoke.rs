use vmbus_sim::sim::{Sim, SimConfig};
#[test]
fn smoke() {
    let r = Sim::new(SimConfig::new(3)).unwrap().run();
    println!("{r}\n{:?}", r.guest);
}
