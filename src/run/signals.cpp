#include "ndif_sweep/run/signals.hpp"

#include <csignal>
#include <initializer_list>

namespace ndif::run {
namespace {

volatile std::sig_atomic_t g_drain = 0;  // 0 none, 1 finish in flight, 2 abandon
volatile std::sig_atomic_t g_signal = 0;

extern "C" void on_signal(int sig) {
  g_signal = sig;
  const std::sig_atomic_t want = sig == SIGUSR1 ? 1 : 2;
  // A second SIGUSR1 after a first one abandons too: the user insists.
  if (g_drain >= want || (sig == SIGUSR1 && g_drain == 1))
    g_drain = 2;
  else
    g_drain = want;
}

}  // namespace

void install_drain_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int sig : {SIGTERM, SIGINT, SIGUSR1}) sigaction(sig, &sa, nullptr);
}

DrainRequest drain_requested() noexcept {
  switch (g_drain) {
    case 1:
      return DrainRequest::finish_in_flight;
    case 2:
      return DrainRequest::abandon_in_flight;
    default:
      return DrainRequest::none;
  }
}

const char* last_signal_name() noexcept {
  switch (g_signal) {
    case SIGTERM:
      return "SIGTERM";
    case SIGINT:
      return "SIGINT";
    case SIGUSR1:
      return "SIGUSR1";
    default:
      return "";
  }
}

}  // namespace ndif::run
