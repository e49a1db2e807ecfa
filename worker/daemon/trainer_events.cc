#include "worker/daemon/trainer_events.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"

namespace llmt::daemon {
namespace {

absl::Status Bad(const std::string& line, const std::string& what) {
  std::string shown = line.size() > 120 ? line.substr(0, 120) + "..." : line;
  return absl::InvalidArgumentError(absl::StrCat("trainer event '", shown, "': ", what));
}

}  // namespace

absl::StatusOr<TrainerEvent> ParseTrainerEvent(const std::string& line) {
  google::protobuf::Struct obj;
  auto st = google::protobuf::util::JsonStringToMessage(line, &obj);
  if (!st.ok()) return Bad(line, absl::StrCat("not a JSON object: ", st.message().ToString()));
  const auto& f = obj.fields();
  auto type_it = f.find("type");
  if (type_it == f.end() || !type_it->second.has_string_value()) {
    return Bad(line, "no string field \"type\"");
  }
  auto num = [&](const char* key, int64_t* out) -> bool {
    auto it = f.find(key);
    if (it == f.end() || !it->second.has_number_value()) return false;
    *out = static_cast<int64_t>(std::llround(it->second.number_value()));
    return true;
  };
  TrainerEvent ev;
  const std::string& type = type_it->second.string_value();
  if (type == "step") {
    ev.type = TrainerEvent::Type::kStep;
    if (!num("step", &ev.step)) return Bad(line, "step event without a numeric \"step\"");
    num("max_steps", &ev.max_steps);
    for (const auto& [k, v] : f) {
      if (k == "step" || k == "max_steps") continue;
      if (v.has_number_value()) ev.metrics[k] = v.number_value();
      if (k == "skipped" && v.has_bool_value()) ev.skipped = v.bool_value();
    }
  } else if (type == "checkpoint") {
    ev.type = TrainerEvent::Type::kCheckpoint;
    if (!num("step", &ev.step)) return Bad(line, "checkpoint event without a numeric \"step\"");
    auto d = f.find("dir");
    if (d == f.end() || !d->second.has_string_value() || d->second.string_value().empty()) {
      return Bad(line, "checkpoint event without \"dir\"");
    }
    ev.dir = d->second.string_value();
    auto vl = f.find("val_loss");
    if (vl != f.end() && vl->second.has_number_value() && vl->second.number_value() > 0) {
      ev.metrics["val_loss"] = vl->second.number_value();
    }
  } else if (type == "exit") {
    ev.type = TrainerEvent::Type::kExit;
    auto ok = f.find("ok");
    if (ok == f.end() || !ok->second.has_bool_value()) {
      return Bad(line, "exit event without a boolean \"ok\"");
    }
    ev.ok = ok->second.bool_value();
    num("final_step", &ev.final_step);
    auto m = f.find("message");
    if (m != f.end() && m->second.has_string_value()) ev.message = m->second.string_value();
  } else {
    return Bad(line, absl::StrCat("unknown type '", type, "'"));
  }
  return ev;
}

}  // namespace llmt::daemon
