/* Embedding restr_runtime in a C program: one image, two expressions, masks in memory.
 *   embed_c EXPORT_DIR */
#include <restr/restr_runtime.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
  if (argc != 2) return fprintf(stderr, "usage: embed_c EXPORT_DIR\n"), 2;
  restr_predictor *predictor = NULL;
  restr_embedding *image = NULL;
  restr_result *result = NULL;
  int code = 1;
  unsigned char *rgb = calloc(120 * 160 * 3, 1); /* your decoded RGB image, 160x120 */
  const char *texts[] = {"the red car", "the dog on the left"};
  if (!rgb) return 1;
  if (restr_predictor_open(argv[1], NULL, &predictor) != RESTR_OK) goto fail;
  if (restr_embed(predictor, rgb, 120, 160, 160 * 3, &image) != RESTR_OK) goto fail;
  if (restr_predict(predictor, image, texts, 2, -1.0f, 0, &result) != RESTR_OK) goto fail;
  for (size_t i = 0; i < restr_result_count(result); ++i) {
    restr_prediction p; /* p.mask belongs to `result` */
    if (restr_result_get(result, i, &p) != RESTR_OK) goto fail;
    printf("%s: area %lld, score %.3f\n", p.text, (long long)p.area, p.score);
  }
  code = 0;
  goto done;
fail:
  fprintf(stderr, "error: %s\n", restr_last_error());
done:
  restr_result_free(result);
  restr_embedding_free(image);
  restr_predictor_free(predictor);
  free(rgb);
  return code;
}
