//! `flexvolume_driver`: virtlet's FlexVolume driver, installed as
//! `<kubelet volume plugin dir>/virtlet~flexvolume_driver/flexvolume_driver` (see the
//! `virtlet-flexvolume` crate).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (answer, ok) = virtlet_flexvolume::run(&args, &virtlet_flexvolume::SystemMounter);
    println!("{answer}");
    std::process::exit(if ok { 0 } else { 1 });
}
