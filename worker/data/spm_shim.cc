// The only translation unit that touches SentencePiece, built as a separate
// shared object (libllmt_spm.so) with a C ABI.
//
// Why: Debian's libsentencepiece.so.0 carries its own private copy of
// protobuf-lite and exports those google::protobuf symbols. Loaded into the
// same global symbol scope as libprotobuf.so.32 (which llmt needs for its
// protos), the two copies interpose each other and the process crashes during
// static initialisation. tokenizer.cc therefore dlopen()s this shim with
// RTLD_LOCAL | RTLD_DEEPBIND: SentencePiece then binds to its own protobuf, and
// nothing of it leaks into the global scope. The shim also keeps
// SentencePiece's headers (whose absl::string_view alias clashes with
// Abseil's) away from the rest of the code.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <unordered_map>
#include <vector>

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

namespace {

char* Dup(const std::string& s) {
  char* p = static_cast<char*>(std::malloc(s.size() + 1));
  std::memcpy(p, s.data(), s.size());
  p[s.size()] = '\0';
  return p;
}

// Streams the training file line by line. Reading it ourselves (rather than
// passing --input) keeps paths with commas working: SentencePiece splits its
// `input` flag on commas.
class FileLineIterator : public sentencepiece::SentenceIterator {
 public:
  explicit FileLineIterator(const char* path) : in_(path, std::ios::binary) {
    if (!in_) {
      status_ = sentencepiece::util::Status(sentencepiece::util::StatusCode::kNotFound,
                                            std::string("cannot open ") + path);
      done_ = true;
      return;
    }
    Next();
  }
  bool done() const override { return done_; }
  void Next() override {
    if (!done_ && !std::getline(in_, line_)) done_ = true;
  }
  const std::string& value() const override { return line_; }
  sentencepiece::util::Status status() const override { return status_; }

 private:
  std::ifstream in_;
  std::string line_;
  bool done_ = false;
  sentencepiece::util::Status status_;
};

}  // namespace

extern "C" {

// Returns a processor handle, or nullptr with *err (malloc'd) set.
void* llmt_spm_load(const char* bytes, size_t n, char** err) {
  auto* sp = new sentencepiece::SentencePieceProcessor();
  auto st = sp->LoadFromSerializedProto(std::string(bytes, n));
  if (!st.ok()) {
    *err = Dup(st.ToString());
    delete sp;
    return nullptr;
  }
  return sp;
}

void llmt_spm_free(void* h) { delete static_cast<sentencepiece::SentencePieceProcessor*>(h); }
void llmt_spm_free_buf(void* p) { std::free(p); }

// *out is malloc'd (free with llmt_spm_free_buf).
void llmt_spm_encode(void* h, const char* text, size_t n, int32_t** out, size_t* out_n) {
  std::vector<int> ids;
  static_cast<sentencepiece::SentencePieceProcessor*>(h)->Encode(std::string(text, n), &ids)
      .IgnoreError();
  *out_n = ids.size();
  *out = static_cast<int32_t*>(std::malloc(sizeof(int32_t) * (ids.size() + 1)));
  for (size_t i = 0; i < ids.size(); ++i) (*out)[i] = ids[i];
}

char* llmt_spm_decode(void* h, const int32_t* ids, size_t n, size_t* out_n) {
  std::vector<int> v(ids, ids + n);
  std::string s;
  static_cast<sentencepiece::SentencePieceProcessor*>(h)->Decode(v, &s).IgnoreError();
  *out_n = s.size();
  return Dup(s);
}

int llmt_spm_piece_size(void* h) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(h)->GetPieceSize();
}
int llmt_spm_bos_id(void* h) { return static_cast<sentencepiece::SentencePieceProcessor*>(h)->bos_id(); }
int llmt_spm_eos_id(void* h) { return static_cast<sentencepiece::SentencePieceProcessor*>(h)->eos_id(); }
char* llmt_spm_id_to_piece(void* h, int id) {
  return Dup(static_cast<sentencepiece::SentencePieceProcessor*>(h)->IdToPiece(id));
}
float llmt_spm_score(void* h, int id) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(h)->GetScore(id);
}

// Trains a model on the lines of `input_path`; keys/values are trainer flags.
// Returns 0 and a malloc'd serialized model, or -1 with *err.
int llmt_spm_train(const char* const* keys, const char* const* values, int n_args,
                   const char* input_path, unsigned seed, char** model, size_t* model_n,
                   char** err) {
  std::unordered_map<std::string, std::string> args;
  for (int i = 0; i < n_args; ++i) args[keys[i]] = values[i];
  sentencepiece::SetRandomGeneratorSeed(seed);
  FileLineIterator it(input_path);
  std::string out;
  auto st = sentencepiece::SentencePieceTrainer::Train(args, &it, &out);
  if (st.ok()) st = it.status();
  if (!st.ok()) {
    *err = Dup(st.ToString());
    return -1;
  }
  *model_n = out.size();
  *model = static_cast<char*>(std::malloc(out.size() + 1));
  std::memcpy(*model, out.data(), out.size());
  return 0;
}

}  // extern "C"
