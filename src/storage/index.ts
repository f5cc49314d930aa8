export { FilesystemBlobStore } from './filesystem.js';
export {
  BlobNotFoundError,
  UploadNotFoundError,
  type BlobReader,
  type BlobStore,
  type ByteRange,
  type CommitOutcome,
  type StoredUpload,
} from './types.js';
