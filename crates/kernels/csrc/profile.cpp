// MLX_NODE_PROFILE=1: where the CPU stream's time goes. Each of our tasks is timed under its
// primitive's name and output shapes, and the time between the end of one of our tasks and the
// start of the next (MLX's own ops, the stream waiting for work) is added up beside them;
// MLX_NODE_PROFILE=gaps also splits that time by the pair of tasks around it. The table goes
// to stderr when the process exits. Off, it costs one branch per task.

#include "kernels.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace mlxnk {
namespace {

struct Totals {
  int64_t calls = 0;
  double seconds = 0;
};

struct Profile {
  std::mutex mu;
  std::map<std::string, Totals> by_task;
  Totals between;  // from the end of one of our tasks to the start of the next
  bool gaps = false;
  std::map<std::string, Totals> between_pairs;
  double last_end = -1;
  std::string last;

  ~Profile() {
    double ours = 0;
    for (const auto& r : by_task) ours += r.second.seconds;
    std::fprintf(stderr, "[mlx-node profile] %.1f ms in our tasks, %.1f ms between them\n",
                 ours * 1e3, between.seconds * 1e3);
    print(by_task, "");
    if (gaps) print(between_pairs, "between ");
  }

  static void print(const std::map<std::string, Totals>& table, const char* prefix) {
    std::vector<std::pair<std::string, Totals>> rows(table.begin(), table.end());
    std::sort(rows.begin(), rows.end(),
              [](const auto& a, const auto& b) { return a.second.seconds > b.second.seconds; });
    for (const auto& [what, t] : rows) {
      std::fprintf(stderr, "%10.2f ms %8lld calls %9.1f us/call  %s%s\n", t.seconds * 1e3,
                   static_cast<long long>(t.calls), t.seconds * 1e6 / t.calls, prefix,
                   what.c_str());
    }
  }
};

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

Profile* make_profile() {
  const char* v = std::getenv("MLX_NODE_PROFILE");
  if (v == nullptr || std::string(v) == "0" || std::string(v).empty()) return nullptr;
  auto* p = new Profile;
  p->gaps = std::string(v) == "gaps";
  return p;
}

Profile* profile() {
  static Profile* p = make_profile();
  static const bool registered = p != nullptr && std::atexit([] { delete p; }) == 0;
  (void)registered;
  return p;
}

}  // namespace

bool profiling() { return profile() != nullptr; }

double profile_clock() { return now(); }

void profile_task(const std::string& what, double start, double end) {
  Profile* p = profile();
  if (p == nullptr) return;
  std::lock_guard<std::mutex> lock(p->mu);
  Totals& t = p->by_task[what];
  t.calls += 1;
  t.seconds += end - start;
  if (p->last_end >= 0 && start > p->last_end) {
    p->between.calls += 1;
    p->between.seconds += start - p->last_end;
    if (p->gaps) {
      Totals& g = p->between_pairs[p->last + " and " + what];
      g.calls += 1;
      g.seconds += start - p->last_end;
    }
  }
  p->last_end = end;
  p->last = what;
}

}  // namespace mlxnk
